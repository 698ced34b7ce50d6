//! The bench's results: rows of one table, printed for people and as JSON for scripts.
//! A row is a figure, optionally with the baseline it is measured against (the ratio is
//! ours / theirs, both from this run) and the target that ratio or figure must meet.

use crate::report::Json;

/// Whether a bigger figure is better (throughput) or a smaller one (latency, memory).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Better {
    Higher,
    Lower,
}

/// What a row is held to.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// ratio >= x (Higher) or ratio <= x (Lower)
    Ratio(f64),
    /// value <= x or >= x, per `Better`
    Value(f64),
}

#[derive(Clone, Debug)]
pub struct Row {
    pub section: &'static str,
    pub what: String,
    pub value: f64,
    pub unit: &'static str,
    pub better: Better,
    /// The baseline's name and its figure, same unit.
    pub baseline: Option<(String, f64)>,
    pub target: Option<Target>,
}

impl Row {
    pub fn new(section: &'static str, what: impl Into<String>, value: f64, unit: &'static str) -> Row {
        Row { section, what: what.into(), value, unit, better: Better::Higher, baseline: None, target: None }
    }

    pub fn lower_is_better(mut self) -> Row {
        self.better = Better::Lower;
        self
    }

    pub fn against(mut self, name: impl Into<String>, value: f64) -> Row {
        self.baseline = Some((name.into(), value));
        self
    }

    pub fn target(mut self, target: Target) -> Row {
        self.target = Some(target);
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        self.baseline.as_ref().filter(|(_, b)| *b > 0.0).map(|(_, b)| self.value / b)
    }

    /// Whether the row meets its target (`None` without one).
    pub fn met(&self) -> Option<bool> {
        let higher = self.better == Better::Higher;
        match self.target? {
            Target::Ratio(x) => self.ratio().map(|r| if higher { r >= x } else { r <= x }),
            Target::Value(x) => Some(if higher { self.value >= x } else { self.value <= x }),
        }
    }
}

/// Numbers as people read them: three significant digits, thousands kept whole.
pub fn figure(x: f64) -> String {
    if x >= 1000.0 {
        format!("{x:.0}")
    } else if x >= 100.0 {
        format!("{x:.1}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn target_text(row: &Row) -> String {
    let Some(t) = row.target else { return String::new() };
    let op = if row.better == Better::Higher { ">=" } else { "<=" };
    let text = match t {
        Target::Ratio(x) => format!("{op} {x:.2}x"),
        Target::Value(x) => format!("{op} {} {}", figure(x), row.unit),
    };
    let verdict = match row.met() {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "n/a",
    };
    format!("{text} {verdict}")
}

/// The table as Markdown (README takes it as printed).
pub fn markdown(header: &str, rows: &[Row]) -> String {
    let mut out = format!("{header}\n\n| section | measurement | wsktls | baseline | ratio | target |\n");
    out += "|---|---|---:|---|---:|---|\n";
    for r in rows {
        let baseline = r
            .baseline
            .as_ref()
            .map(|(name, v)| format!("{name}: {} {}", figure(*v), r.unit))
            .unwrap_or_default();
        let ratio = r.ratio().map(|x| format!("{x:.2}x")).unwrap_or_default();
        out += &format!(
            "| {} | {} | {} {} | {} | {} | {} |\n",
            r.section,
            r.what,
            figure(r.value),
            r.unit,
            baseline,
            ratio,
            target_text(r)
        );
    }
    out
}

/// The rows as one JSON array of objects.
pub fn json(header: &[(&str, String)], rows: &[Row]) -> String {
    let mut head = Json::default();
    for (k, v) in header {
        head.str(k, v);
    }
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            let mut j = Json::default();
            j.str("section", r.section).str("what", &r.what).num("value", r.value).str("unit", r.unit);
            if let Some((name, v)) = &r.baseline {
                j.str("baseline", name).num("baseline_value", *v);
            }
            if let Some(x) = r.ratio() {
                j.num("ratio", x);
            }
            if let Some(met) = r.met() {
                j.str("target", target_text(r).rsplit_once(' ').map_or("", |(t, _)| t)).bool("met", met);
            }
            j.finish()
        })
        .collect();
    let head = head.finish();
    format!("{{\"machine\":{head},\"rows\":[{}]}}", items.join(","))
}
