//! Results: one row of named figures per (scenario variant, target, repetition), medians over
//! repetitions, printed as one JSON line and one Markdown table per scenario.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::json;

/// The figures of one run of one variant against one target.
pub type Figures = BTreeMap<&'static str, f64>;

/// Adds p50/p99/max (milliseconds) of a latency histogram in microseconds.
pub fn add_latencies(figures: &mut Figures, latencies: &Histogram<u64>) {
    let ms = |micros: u64| micros as f64 / 1000.0;
    if latencies.is_empty() {
        return;
    }
    figures.insert("p50_ms", ms(latencies.value_at_quantile(0.50)));
    figures.insert("p99_ms", ms(latencies.value_at_quantile(0.99)));
    figures.insert("max_ms", ms(latencies.max()));
}

/// Every repetition of one scenario.
pub struct Scenario {
    pub name: &'static str,
    /// Column order for the table: the figures in the order first seen.
    columns: Vec<&'static str>,
    /// (variant, target) → figures of each repetition, in first-seen order.
    rows: Vec<((String, String), Vec<Figures>)>,
    /// Failed runs: (variant, target, error).
    failures: Vec<(String, String, String)>,
    /// Figures measured in the same run that belong to no target (the disk's fsync floor).
    same_run: BTreeMap<&'static str, f64>,
    /// Lines printed under the table: what those figures are, and the targets checked with them.
    notes: Vec<String>,
}

impl Scenario {
    pub fn new(name: &'static str) -> Scenario {
        Scenario {
            name,
            columns: Vec::new(),
            rows: Vec::new(),
            failures: Vec::new(),
            same_run: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    /// Records a figure of the run that belongs to no target.
    pub fn same_run(&mut self, name: &'static str, value: f64) {
        self.same_run.insert(name, value);
    }

    /// Adds a line to print under the table.
    pub fn note(&mut self, line: String) {
        self.notes.push(line);
    }

    /// The figures' names, in the order first seen.
    pub fn columns(&self) -> &[&'static str] {
        &self.columns
    }

    /// The targets with at least one recorded run, in first-seen order.
    pub fn targets(&self) -> Vec<String> {
        let mut targets: Vec<String> = Vec::new();
        for ((_, target), _) in &self.rows {
            if !targets.contains(target) {
                targets.push(target.clone());
            }
        }
        targets
    }

    pub fn record(&mut self, variant: &str, target: &str, figures: Figures) {
        for key in figures.keys() {
            if !self.columns.contains(key) {
                self.columns.push(key);
            }
        }
        let key = (variant.to_owned(), target.to_owned());
        match self.rows.iter_mut().find(|(k, _)| *k == key) {
            Some((_, runs)) => runs.push(figures),
            None => self.rows.push((key, vec![figures])),
        }
    }

    pub fn fail(&mut self, variant: &str, target: &str, error: &anyhow::Error) {
        eprintln!("  {} {variant} {target}: FAILED: {error:#}", self.name);
        self.failures
            .push((variant.to_owned(), target.to_owned(), format!("{error:#}")));
    }

    /// The median of `figure` over the repetitions of (variant, target).
    pub fn median(&self, variant: &str, target: &str, figure: &str) -> Option<f64> {
        let (_, runs) = self
            .rows
            .iter()
            .find(|((v, t), _)| v == variant && t == target)?;
        median(
            runs.iter()
                .filter_map(|run| run.get(figure).copied())
                .collect(),
        )
    }

    /// One JSON line with the medians and every repetition.
    pub fn json_line(&self) -> String {
        let rows: Vec<_> = self
            .rows
            .iter()
            .map(|((variant, target), runs)| {
                let medians: BTreeMap<_, _> = self
                    .columns
                    .iter()
                    .filter_map(|column| Some((*column, self.median(variant, target, column)?)))
                    .collect();
                json!({ "variant": variant, "target": target, "median": medians, "runs": runs })
            })
            .collect();
        let failures: Vec<_> = self
            .failures
            .iter()
            .map(|(variant, target, error)| json!({ "variant": variant, "target": target, "error": error }))
            .collect();
        json!({
            "scenario": self.name,
            "rows": rows,
            "failures": failures,
            "same_run": self.same_run,
            "notes": self.notes,
        })
        .to_string()
    }

    /// A Markdown table of medians, one row per (variant, target).
    pub fn markdown(&self) -> String {
        let mut out = format!("| {} | target |", self.name);
        for column in &self.columns {
            out.push_str(&format!(" {column} |"));
        }
        out.push_str("\n| --- | --- |");
        for _ in &self.columns {
            out.push_str(" ---: |");
        }
        out.push('\n');
        for ((variant, target), runs) in &self.rows {
            out.push_str(&format!("| {variant} | {target} ({} runs) |", runs.len()));
            for column in &self.columns {
                match self.median(variant, target, column) {
                    Some(value) => out.push_str(&format!(" {} |", pretty(value))),
                    None => out.push_str(" – |"),
                }
            }
            out.push('\n');
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                out.push_str(&format!("- {note}\n"));
            }
        }
        for (variant, target, error) in &self.failures {
            out.push_str(&format!("\nFailed: {variant} on {target}: {error}\n"));
        }
        out
    }
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// Three significant digits, no exponent.
pub fn pretty(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 || value == value.trunc() {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_are_taken_per_variant_and_target() {
        let mut scenario = Scenario::new("s");
        for value in [3.0, 1.0, 2.0] {
            scenario.record("n=2", "a", Figures::from([("x", value)]));
        }
        scenario.record("n=2", "b", Figures::from([("x", 10.0)]));
        scenario.record("n=2", "b", Figures::from([("x", 20.0)]));
        assert_eq!(scenario.median("n=2", "a", "x"), Some(2.0));
        assert_eq!(scenario.median("n=2", "b", "x"), Some(15.0));
        assert_eq!(scenario.median("n=3", "a", "x"), None);
        assert!(scenario.markdown().contains("| n=2 | a (3 runs) | 2 |"));
    }
}
