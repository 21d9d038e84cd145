//! The Prometheus exposition formats, shared by the controller's and the agent's `/metrics`:
//! prometheus-client writes OpenMetrics text only; scrapers that do not ask for it (curl,
//! `promtool check metrics`, older Prometheus) get the classic text format 0.0.4. Pure text
//! transforms, no I/O.

/// The content type of OpenMetrics text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the classic Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `openmetrics` (complete, with `# EOF`) as the scraper's `Accept` header asks: OpenMetrics
/// when it names it, else the classic format. The content type and the text.
pub fn negotiate(openmetrics: String, accept: Option<&str>) -> (&'static str, String) {
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        (CONTENT_TYPE, openmetrics)
    } else {
        (
            PROMETHEUS_CONTENT_TYPE,
            openmetrics_to_prometheus(&openmetrics),
        )
    }
}

/// Turns OpenMetrics text as prometheus-client writes it into the Prometheus text format
/// 0.0.4: a counter family `x` is named `x_total` in its `# HELP`/`# TYPE` lines (its samples
/// already are), and `# UNIT` and `# EOF` lines go (0.0.4 has neither). Samples are the same
/// in both formats (no exemplars or `_created` series are written here).
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut help: Option<(&str, &str)> = None;
    for line in text.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let exposed = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some((help_name, text)) = help.take() {
                if help_name == name {
                    out.push_str(&format!("# HELP {exposed} {text}\n"));
                } else {
                    out.push_str(&format!("# HELP {help_name} {text}\n"));
                }
            }
            out.push_str(&format!("# TYPE {exposed} {kind}\n"));
            continue;
        }
        if let Some((name, text)) = help.take() {
            out.push_str(&format!("# HELP {name} {text}\n"));
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}
