//! Supervisors: strategies, restart types, intensity and escalation, ordered
//! start and reverse-order shutdown — over `dspex::actors::supervisor`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex::actors::supervisor::{
    start_fn, supervisor_start_fn, ChildSpec, Restart, Strategy, Supervisor, SupervisorMsg, SupervisorSpec,
};
use dspex::IntensityConfig;
use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef};

type Log = Arc<Mutex<Vec<String>>>;

/// A child that logs its start and stop and fails or ends on request.
struct Child {
    name: String,
    log: Log,
}

enum Cmd {
    Fail,
    End,
}

impl Actor for Child {
    type Msg = Cmd;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Cmd>, _: ()) -> Result<(), ActorProcessingErr> {
        self.log.lock().push(format!("start {}", self.name));
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<Cmd>, _: &mut ()) -> Result<(), ActorProcessingErr> {
        self.log.lock().push(format!("stop {}", self.name));
        Ok(())
    }

    async fn handle(&self, me: ActorRef<Cmd>, msg: Cmd, _: &mut ()) -> Result<(), ActorProcessingErr> {
        match msg {
            Cmd::Fail => Err(format!("{} was told to fail", self.name).into()),
            Cmd::End => {
                me.stop(None);
                Ok(())
            }
        }
    }
}

fn child(name: &str, restart: Restart, log: &Log) -> ChildSpec {
    let (n, l) = (name.to_string(), log.clone());
    ChildSpec::new(name, restart, start_fn(move || Child { name: n.clone(), log: l.clone() }, || ()))
}

fn fast(max: u32) -> IntensityConfig {
    IntensityConfig {
        max_restarts: max,
        period_ms: 5_000,
        backoff_initial_ms: 1,
        backoff_max_ms: 10,
        healthy_after_ms: 0,
    }
}

fn abc(strategy: Strategy, log: &Log) -> SupervisorSpec {
    SupervisorSpec::new("sup", strategy, fast(10))
        .child(child("a", Restart::Permanent, log))
        .child(child("b", Restart::Permanent, log))
        .child(child("c", Restart::Permanent, log))
}

fn count(log: &Log, entry: &str) -> usize {
    log.lock().iter().filter(|e| *e == entry).count()
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn tell(sup: &ActorRef<SupervisorMsg>, name: &str, cmd: Cmd) {
    let cell = Supervisor::child(sup, name).await.unwrap_or_else(|| panic!("{name} is not running"));
    ActorRef::<Cmd>::from(cell).send_message(cmd).unwrap();
}

async fn restarts(sup: &ActorRef<SupervisorMsg>) -> Vec<u32> {
    Supervisor::snapshot(sup).await.unwrap().children.iter().map(|c| c.restarts).collect()
}

async fn all_running(sup: &ActorRef<SupervisorMsg>) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let t = Supervisor::snapshot(sup).await.unwrap();
        if t.children.iter().all(|c| c.status == "running") {
            return;
        }
        assert!(Instant::now() < end, "children never all running: {t:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn one_for_one_restarts_only_the_failed_child() {
    let log = Log::default();
    let (sup, h) = Supervisor::start(None, abc(Strategy::OneForOne, &log)).await.unwrap();
    assert_eq!(*log.lock(), ["start a", "start b", "start c"], "ordered start");
    tell(&sup, "b", Cmd::Fail).await;
    wait_until("b restarted", || count(&log, "start b") == 2).await;
    all_running(&sup).await;
    assert_eq!(restarts(&sup).await, [0, 1, 0]);
    assert_eq!((count(&log, "start a"), count(&log, "start c")), (1, 1));
    sup.stop(None);
    h.await.unwrap();
}

#[tokio::test]
async fn one_for_all_restarts_every_child() {
    let log = Log::default();
    let (sup, h) = Supervisor::start(None, abc(Strategy::OneForAll, &log)).await.unwrap();
    tell(&sup, "b", Cmd::Fail).await;
    wait_until("all restarted", || ["a", "b", "c"].iter().all(|n| count(&log, &format!("start {n}")) == 2)).await;
    all_running(&sup).await;
    assert_eq!(restarts(&sup).await, [1, 1, 1]);
    // The others were stopped (gracefully) before the restart, last started first.
    let stops: Vec<String> = log.lock().iter().filter(|e| e.starts_with("stop")).cloned().collect();
    assert_eq!(stops, ["stop c", "stop a"]);
    sup.stop(None);
    h.await.unwrap();
}

#[tokio::test]
async fn rest_for_one_restarts_the_failed_child_and_those_after_it() {
    let log = Log::default();
    let (sup, h) = Supervisor::start(None, abc(Strategy::RestForOne, &log)).await.unwrap();
    tell(&sup, "b", Cmd::Fail).await;
    wait_until("b and c restarted", || count(&log, "start b") == 2 && count(&log, "start c") == 2).await;
    all_running(&sup).await;
    assert_eq!(restarts(&sup).await, [0, 1, 1]);
    assert_eq!(count(&log, "start a"), 1);
    sup.stop(None);
    h.await.unwrap();
}

#[tokio::test]
async fn restart_types_permanent_transient_temporary() {
    let log = Log::default();
    let spec = SupervisorSpec::new("sup", Strategy::OneForOne, fast(10))
        .child(child("perm", Restart::Permanent, &log))
        .child(child("trans", Restart::Transient, &log))
        .child(child("temp", Restart::Temporary, &log))
        .child(child("trans2", Restart::Transient, &log));
    let (sup, h) = Supervisor::start(None, spec).await.unwrap();
    // Permanent: restarted even after a normal end.
    tell(&sup, "perm", Cmd::End).await;
    wait_until("perm restarted", || count(&log, "start perm") == 2).await;
    // Transient: a normal end is final; a failure is restarted.
    tell(&sup, "trans", Cmd::End).await;
    tell(&sup, "trans2", Cmd::Fail).await;
    wait_until("trans2 restarted", || count(&log, "start trans2") == 2).await;
    // Temporary: never restarted, even after a failure.
    tell(&sup, "temp", Cmd::Fail).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!((count(&log, "start trans"), count(&log, "start temp")), (1, 1));
    let names: Vec<String> = Supervisor::snapshot(&sup).await.unwrap().children.into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["perm", "trans2"], "ended transient and temporary children leave the tree");
    sup.stop(None);
    h.await.unwrap();
}

#[tokio::test]
async fn exceeding_restart_intensity_escalates_to_the_parent() {
    let log = Log::default();
    let l = log.clone();
    let inner =
        move || SupervisorSpec::new("inner", Strategy::OneForOne, fast(2)).child(child("x", Restart::Permanent, &l));
    let outer = SupervisorSpec::new("outer", Strategy::OneForOne, fast(5)).child(ChildSpec::new(
        "inner",
        Restart::Permanent,
        supervisor_start_fn(inner),
    ));
    let (sup, h) = Supervisor::start(None, outer).await.unwrap();
    let inner_ref = Supervisor::child_supervisor(&sup, "inner").await.unwrap();
    // Three failures in the period: the inner supervisor allows two, then gives up.
    for n in 1..=3 {
        tell(&inner_ref, "x", Cmd::Fail).await;
        if n < 3 {
            wait_until("x restarted", || count(&log, "start x") == n + 1).await;
            all_running(&inner_ref).await;
        }
    }
    // The outer supervisor restarts the inner one, which starts x afresh.
    wait_until("inner restarted by outer", || count(&log, "start x") == 4).await;
    let tree = Supervisor::snapshot(&sup).await.unwrap();
    assert_eq!(tree.children[0].name, "inner");
    assert_eq!(tree.children[0].restarts, 1);
    assert_eq!(tree.children[0].children[0].restarts, 0, "a fresh inner supervisor");

    // A supervisor with no parent that exceeds its intensity ends.
    let log2 = Log::default();
    let lone = SupervisorSpec::new("lone", Strategy::OneForOne, fast(0)).child(child("y", Restart::Permanent, &log2));
    let (lone_ref, lone_done) = Supervisor::start(None, lone).await.unwrap();
    tell(&lone_ref, "y", Cmd::Fail).await;
    tokio::time::timeout(Duration::from_secs(5), lone_done).await.expect("the supervisor ended").unwrap();
    sup.stop(None);
    h.await.unwrap();
}

#[tokio::test]
async fn shutdown_stops_children_in_reverse_start_order() {
    let log = Log::default();
    let (sup, h) = Supervisor::start(None, abc(Strategy::OneForOne, &log)).await.unwrap();
    sup.stop_and_wait(None, Some(Duration::from_secs(5))).await.unwrap();
    h.await.unwrap();
    assert_eq!(*log.lock(), ["start a", "start b", "start c", "stop c", "stop b", "stop a"]);
}

#[tokio::test]
async fn children_can_be_added_and_removed_at_runtime() {
    let log = Log::default();
    let (sup, h) = Supervisor::start(None, SupervisorSpec::new("sup", Strategy::OneForOne, fast(3))).await.unwrap();
    Supervisor::add_child(&sup, child("d", Restart::Permanent, &log)).await.unwrap();
    assert!(Supervisor::add_child(&sup, child("d", Restart::Permanent, &log)).await.unwrap_err().contains("already"));
    assert!(Supervisor::remove_child(&sup, "d").await.unwrap());
    assert!(!Supervisor::remove_child(&sup, "d").await.unwrap());
    assert_eq!(*log.lock(), ["start d", "stop d"]);
    assert!(Supervisor::snapshot(&sup).await.unwrap().children.is_empty());
    sup.stop(None);
    h.await.unwrap();
}

#[tokio::test]
async fn children_that_ran_healthily_are_replaced_at_once_and_not_counted() {
    // At most one counted restart: a second quick failure escalates.
    let log = Log::default();
    let intensity = IntensityConfig { backoff_initial_ms: 200, backoff_max_ms: 1000, ..fast(1) }
        .healthy_after(Duration::from_millis(50));
    let spec = SupervisorSpec::new("pool", Strategy::OneForOne, intensity).child(child("w", Restart::Permanent, &log));
    let (sup, h) = Supervisor::start(None, spec).await.unwrap();
    // Killed from outside after running a while, five times: each replaced
    // at once (no 200 ms back-off), none counted.
    for n in 2..=6 {
        tokio::time::sleep(Duration::from_millis(80)).await;
        let t = Instant::now();
        tell(&sup, "w", Cmd::Fail).await;
        wait_until("w replaced", || count(&log, "start w") == n).await;
        assert!(t.elapsed() < Duration::from_millis(150), "a healthy child waited {:?}", t.elapsed());
    }
    assert_eq!(restarts(&sup).await, [5]);
    // Failing right after its start is a crash loop: counted, backed off,
    // and the second one escalates.
    all_running(&sup).await;
    tell(&sup, "w", Cmd::Fail).await;
    let t = Instant::now();
    wait_until("w restarted after its back-off", || count(&log, "start w") == 7).await;
    assert!(t.elapsed() >= Duration::from_millis(150), "a crash-looping child was not backed off");
    all_running(&sup).await;
    tell(&sup, "w", Cmd::Fail).await;
    tokio::time::timeout(Duration::from_secs(5), h).await.expect("the supervisor escalated").ok();
}
