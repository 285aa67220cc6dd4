//! `dspy.evaluate` metrics, with DSPy's text normalisation.
//!
//! ```
//! use dspex_native::metrics;
//!
//! assert_eq!(metrics::normalize_text("The,  Eiffel  Tower!"), "eiffel tower");
//! assert!(metrics::answer_exact_match(&["Eiffel Tower", "Louvre"], "The Eiffel Tower", 1.0));
//! assert!((metrics::f1_score("Eiffel Tower is in Paris", "Paris") - 1.0 / 3.0).abs() < 1e-9);
//! ```

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

use crate::py;
use crate::pyemu::unicode::is_word;

/// DSPy's `normalize_text`: NFD, lower case, ASCII punctuation removed,
/// English articles removed, whitespace collapsed.
pub fn normalize_text(s: &str) -> String {
    let lowered: String = s.nfd().collect::<String>().to_lowercase();
    let no_punct: String = lowered.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    // re.sub(r"\b(a|an|the)\b", " ", text): whole word runs only.
    let mut no_articles = String::with_capacity(no_punct.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if matches!(word.as_str(), "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in no_punct.chars() {
        if is_word(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut no_articles);
            no_articles.push(c);
        }
    }
    flush(&mut word, &mut no_articles);
    split_whitespace(&no_articles).join(" ")
}

/// Python's `str.split()` with no arguments.
fn split_whitespace(s: &str) -> Vec<&str> {
    s.split(py::is_space).filter(|w| !w.is_empty()).collect()
}

/// Normalised strings are equal.
pub fn em_score(prediction: &str, ground_truth: &str) -> bool {
    normalize_text(prediction) == normalize_text(ground_truth)
}

fn overlap(prediction: &[&str], truth: &[&str]) -> usize {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in truth {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0;
    for p in prediction {
        if let Some(c) = counts.get_mut(p) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    same
}

fn token_f1(prediction: &str, truth: &str) -> f64 {
    let p: Vec<&str> = split_whitespace(prediction);
    let t: Vec<&str> = split_whitespace(truth);
    let same = overlap(&p, &t);
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / p.len() as f64;
    let recall = same as f64 / t.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Token-level F1 after normalisation (DSPy's `f1_score`).
pub fn f1_score(prediction: &str, ground_truth: &str) -> f64 {
    token_f1(&normalize_text(prediction), &normalize_text(ground_truth))
}

/// Token-level precision after normalisation (DSPy's `precision_score`).
pub fn precision_score(prediction: &str, ground_truth: &str) -> f64 {
    let p = normalize_text(prediction);
    let t = normalize_text(ground_truth);
    let p: Vec<&str> = split_whitespace(&p);
    let t: Vec<&str> = split_whitespace(&t);
    let same = overlap(&p, &t);
    if same == 0 {
        0.0
    } else {
        same as f64 / p.len() as f64
    }
}

/// HotPotQA's F1: `yes` / `no` / `noanswer` must match exactly.
pub fn hotpot_f1_score(prediction: &str, ground_truth: &str) -> f64 {
    let p = normalize_text(prediction);
    let t = normalize_text(ground_truth);
    let special = ["yes", "no", "noanswer"];
    if (special.contains(&p.as_str()) || special.contains(&t.as_str())) && p != t {
        return 0.0;
    }
    token_f1(&p, &t)
}

/// `EM`: whether any reference matches exactly after normalisation.
pub fn exact_match(prediction: &str, answers: &[&str]) -> bool {
    answers.iter().any(|a| em_score(prediction, a))
}

/// `F1`: the best F1 over the references.
pub fn max_f1(prediction: &str, answers: &[&str]) -> f64 {
    answers.iter().map(|a| f1_score(prediction, a)).fold(0.0, f64::max)
}

/// `answer_exact_match`: exact match when `frac >= 1`, otherwise the best F1 must reach `frac`.
pub fn answer_exact_match(answers: &[&str], prediction: &str, frac: f64) -> bool {
    if frac >= 1.0 {
        exact_match(prediction, answers)
    } else {
        max_f1(prediction, answers) >= frac
    }
}

fn dpr_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?i)([\p{L}\p{N}\p{M}]+)|([^\p{Z}\p{C}])")
            .unwrap_or_else(|_| Regex::new("$^").unwrap_or_else(|_| std::process::abort()))
    })
}

/// DSPy's `DPR_normalize`: NFD, then DPR's simple tokenizer, lower-cased tokens.
pub fn dpr_normalize(text: &str) -> Vec<String> {
    let nfd: String = text.nfd().collect();
    dpr_regex().find_iter(&nfd).map(|m| m.as_str().to_lowercase()).collect()
}

/// `answer_passage_match`: whether any passage contains any answer as a token sequence.
pub fn answer_passage_match(answers: &[&str], passages: &[&str]) -> bool {
    let tokenized: Vec<Vec<String>> = answers.iter().map(|a| dpr_normalize(&normalize_text(a))).collect();
    passages.iter().any(|passage| {
        let text = dpr_normalize(&normalize_text(passage));
        tokenized.iter().any(|ans| {
            if ans.len() > text.len() {
                return false;
            }
            (0..=text.len() - ans.len()).any(|i| text[i..i + ans.len()] == ans[..])
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        assert_eq!(normalize_text("A cat and an owl saw the Theatre"), "cat and owl saw theatre");
        assert_eq!(normalize_text("  tabs\tand\nnewlines\u{a0}nbsp  "), "tabs and newlines nbsp");
        assert_eq!(hotpot_f1_score("yes", "no"), 0.0);
        assert!(answer_passage_match(&["Eiffel Tower"], &["The Eiffel Tower is in Paris."]));
        assert!(!answer_passage_match(&["Paris"], &["Parisian cafés"]));
        assert_eq!(precision_score("eiffel tower in paris", "eiffel tower"), 0.5);
        assert_eq!(precision_score("", ""), 0.0);
    }
}
