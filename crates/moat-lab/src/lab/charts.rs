//! SVG charts of a lab report (plotters' SVG backend: text becomes `<text>` elements, so no
//! system font is needed): per attack, the steady p99 over time per target with the attack
//! window shaded, success per phase, Redis connections and moat's RSS over time.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::LabError;
use super::report::{LabReport, RunReport};
use crate::legit::LegitGroup;

const SIZE: (u32, u32) = (800, 400);
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

/// One line of a chart.
struct Series {
    label: String,
    points: Vec<(f64, f64)>,
}

/// Writes every chart of `report` into `dir`; returns the files written.
pub fn write_all(report: &LabReport, dir: &Path) -> Result<Vec<PathBuf>, LabError> {
    let mut written = Vec::new();
    let mut attacks: Vec<&str> = Vec::new();
    for r in &report.runs {
        if !attacks.contains(&r.attack.as_str()) {
            attacks.push(&r.attack);
        }
    }
    let p = &report.scenario.phases;
    let window = (
        p.baseline.as_secs_f64(),
        (p.baseline + p.attack).as_secs_f64(),
    );
    for attack in attacks {
        let runs: Vec<&RunReport> = report.runs.iter().filter(|r| r.attack == attack).collect();
        let file = |what: &str| dir.join(format!("{}-{what}.svg", slug(attack)));

        let p99: Vec<Series> = runs.iter().map(|r| p99_series(r)).collect();
        let path = file("p99");
        line_chart(
            &path,
            &format!("{attack}: steady p99 (ms)"),
            &p99,
            Some(window),
        )?;
        written.push(path);

        let success: Vec<Series> = runs
            .iter()
            .map(|r| Series {
                label: r.target.clone(),
                points: r
                    .phases
                    .iter()
                    .enumerate()
                    .filter_map(|(i, ph)| Some((i as f64, ph.legit_success_pct?)))
                    .collect(),
            })
            .collect();
        let path = file("success");
        line_chart(
            &path,
            &format!("{attack}: legit success % (baseline, attack, recovery)"),
            &success,
            None,
        )?;
        written.push(path);

        let conns: Vec<Series> = runs
            .iter()
            .map(|r| Series {
                label: r.target.clone(),
                points: r
                    .samples
                    .iter()
                    .filter_map(|s| Some((s.t, *s.info.get("connected_clients")? as f64)))
                    .collect(),
            })
            .collect();
        let path = file("redis-connections");
        line_chart(
            &path,
            &format!("{attack}: Redis connected_clients"),
            &conns,
            Some(window),
        )?;
        written.push(path);

        let rss: Vec<Series> = runs
            .iter()
            .map(|r| Series {
                label: r.target.clone(),
                points: r
                    .samples
                    .iter()
                    .filter_map(|s| Some((s.t, *s.rss.get("moat")? as f64 / 1048576.0)))
                    .collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if !rss.is_empty() {
            let path = file("moat-rss");
            line_chart(
                &path,
                &format!("{attack}: moat RSS (MiB)"),
                &rss,
                Some(window),
            )?;
            written.push(path);
        }
    }
    Ok(written)
}

/// A file-name-safe version of an attack's name.
fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn p99_series(r: &RunReport) -> Series {
    // A second a phase switch cuts in two has a row per phase: the worse one stands.
    let mut by_second = std::collections::BTreeMap::new();
    for s in r.legit.iter().flat_map(|l| &l.seconds) {
        if s.group == LegitGroup::Steady && s.ok > 0 {
            let p99 = by_second.entry(s.second).or_insert(0u64);
            *p99 = (*p99).max(s.p99_us);
        }
    }
    let points = by_second
        .into_iter()
        .map(|(second, p99)| (second as f64, p99 as f64 / 1000.0))
        .collect();
    Series {
        label: r.target.clone(),
        points,
    }
}

fn line_chart(
    path: &Path,
    title: &str,
    series: &[Series],
    shade: Option<(f64, f64)>,
) -> Result<(), LabError> {
    let err = |e: String| LabError::Write(format!("{}: {e}", path.display()));
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x1, mut y1) = (1.0f64, 1.0f64);
    for (x, y) in points {
        x1 = x1.max(*x);
        y1 = y1.max(*y);
    }
    if let Some((_, b)) = shade {
        x1 = x1.max(b);
    }
    let y1 = y1 * 1.1;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..x1, 0f64..y1)
        .map_err(|e| err(e.to_string()))?;
    let x_desc = if shade.is_some() {
        "seconds"
    } else {
        "phase: 0 baseline, 1 attack, 2 recovery"
    };
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc(x_desc)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    if let Some((a, b)) = shade {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(a, 0.0), (b, y1)],
                RGBColor(255, 200, 200).mix(0.4).filled(),
            )))
            .map_err(|e| err(e.to_string()))?;
    }
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| err(e.to_string()))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))?;
    Ok(())
}
