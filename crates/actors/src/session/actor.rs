//! The session's actor: its place in the tree, idle expiry, and clean-up in
//! its worker when the session ends. Requests do not pass through it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspex_bridge::commands;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;
use tracing::info;

use super::SessionShared;
use crate::pool::PoolCallOptions;

/// Messages of a session actor.
pub(crate) enum SessionMsg {
    /// Check idle expiry.
    Tick,
}

pub(crate) struct SessionActor {
    session: Arc<SessionShared>,
}

impl SessionActor {
    pub(crate) fn new(session: Arc<SessionShared>) -> SessionActor {
        SessionActor { session }
    }
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<SessionMsg>, _: ()) -> std::result::Result<(), ActorProcessingErr> {
        let ttl = Duration::from_millis(self.session.state.lock().ttl_ms.max(1));
        let every = (ttl / 4).clamp(Duration::from_millis(20), Duration::from_secs(5));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if myself.cast(SessionMsg::Tick).is_err() {
                    return;
                }
            }
        });
        Ok(())
    }

    async fn post_stop(&self, _: ActorRef<SessionMsg>, _: &mut ()) -> std::result::Result<(), ActorProcessingErr> {
        // Only an ended session forgets its objects in its worker; a
        // restarted actor leaves them for the session's next request.
        if !self.session.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let pinned = self.session.pinned.lock().take();
        let sessions = self.session.sessions.upgrade();
        if let (Some((index, _, _)), Some(sessions)) = (pinned, sessions) {
            let (pool, id) = {
                let s = self.session.state.lock();
                (s.pool.clone(), s.id.clone())
            };
            if let Ok(pool) = sessions.dispatcher.pool(&pool) {
                let opts = PoolCallOptions {
                    deadline: Some(Instant::now() + Duration::from_secs(2)),
                    session: Some(id),
                    pin: Some(index),
                    ..Default::default()
                };
                let _ = pool.call(commands::SESSION_DROP, json!({}), &opts).await;
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<SessionMsg>,
        msg: SessionMsg,
        _: &mut (),
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Tick => {
                let ttl = Duration::from_millis(self.session.state.lock().ttl_ms);
                if self.session.last_active.lock().elapsed() < ttl {
                    return Ok(());
                }
                // A session busy with a long request is not idle.
                let Ok(_busy) = self.session.work.try_lock() else { return Ok(()) };
                if let Some(sessions) = self.session.sessions.upgrade() {
                    info!(session = %self.session.id(), "session expired");
                    if let Err(e) = sessions.end(&self.session, "expired").await {
                        info!(session = %self.session.id(), error = %e, "the expired session lives on another node");
                    }
                }
            }
        }
        Ok(())
    }
}
