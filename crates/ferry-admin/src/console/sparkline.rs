//! Inline SVG sparklines from a component's recent samples.

use maud::{html, Markup};

const WIDTH: f64 = 120.0;
const HEIGHT: f64 = 24.0;

/// A sparkline of `values` (oldest first; gaps where a sample had none),
/// scaled from zero to the largest value; nothing with fewer than two
/// values.
pub(crate) fn sparkline(label: &str, values: &[Option<i64>]) -> Markup {
    let known: Vec<(usize, i64)> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| (i, v)))
        .collect();
    if known.len() < 2 {
        return html! {};
    }
    let max = known.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1) as f64;
    let step = WIDTH / (values.len() - 1).max(1) as f64;
    let points: Vec<String> = known
        .iter()
        .map(|(i, v)| {
            let x = *i as f64 * step;
            let y = HEIGHT - 1.0 - (*v).max(0) as f64 / max * (HEIGHT - 2.0);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let last = known.last().map(|(_, v)| *v).unwrap_or(0);
    html! {
        svg.spark width=(WIDTH) height=(HEIGHT) viewBox={"0 0 " (WIDTH) " " (HEIGHT)}
            role="img" aria-label={(label) ", last " (last) ", highest " (max as i64)} {
            polyline points=(points.join(" ")) fill="none" stroke="currentColor" stroke-width="1.5" {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparkline_scales_to_its_highest_value() {
        let svg = sparkline("backlog", &[Some(0), None, Some(10), Some(5)]).into_string();
        assert!(
            svg.contains("points=\"0.0,23.0 80.0,1.0 120.0,12.0\""),
            "{svg}"
        );
        assert!(svg.contains("last 5, highest 10"));
        assert_eq!(sparkline("backlog", &[Some(3)]).into_string(), "");
        assert_eq!(sparkline("lag", &[None, None, None]).into_string(), "");
    }
}
