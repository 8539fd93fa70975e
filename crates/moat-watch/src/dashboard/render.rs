//! Draws a [`Dashboard`] into a ratatui [`Frame`]: a header (the watched Redis, whether it
//! answers, what is and is not watched), one sparkline per series with its current value and
//! scale, the clients/maxclients gauge, the top sources, the alerts (critical first) and,
//! when moat's view is there, a moat panel.
//!
//! Below [`MIN_WIDTH`] x [`MIN_HEIGHT`] the panels would be unreadable: a compact list of
//! the key values is drawn instead, cut to whatever fits. Nothing here can panic on a small
//! or empty area: every size goes through ratatui's layout, which clips.

use std::time::Instant;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Gauge, Paragraph, Row, Sparkline, Table, Wrap};

use super::format::{age, bytes, count, number, or_na};
use super::state::{Dashboard, HostView, Level, Series, SourceOrigin};
use crate::detect::Severity;

/// Narrowest terminal for the full dashboard.
pub const MIN_WIDTH: u16 = 60;
/// Lowest terminal for the full dashboard.
pub const MIN_HEIGHT: u16 = 16;

/// Sparkline bars are scaled to this many steps of their series' scale.
const BAR_STEPS: u64 = 1000;

/// Draws the dashboard over the whole frame.
pub fn draw(frame: &mut Frame<'_>, dashboard: &Dashboard) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        compact(frame, area, dashboard);
        return;
    }
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(frame, header, dashboard);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(body);
    draw_series(frame, left, dashboard);
    draw_right(frame, right, dashboard);
    let footer_text = format!(
        " q, Esc or Ctrl-C: quit · {} of {} polls kept · newest on the right",
        dashboard.clients().len(),
        dashboard.history()
    );
    frame.render_widget(Paragraph::new(footer_text).style(dim()), footer);
}

fn dim() -> Style {
    Style::default().fg(Color::DarkGray)
}

fn severity_style(s: Severity) -> Style {
    match s {
        Severity::Warning => Style::default().fg(Color::Yellow),
        Severity::Critical => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
    }
}

fn severity_tag(s: Severity) -> &'static str {
    match s {
        Severity::Warning => "WARN",
        Severity::Critical => "CRIT",
    }
}

fn level_color(level: Option<Level>) -> Color {
    match level {
        Some(Level::Ok) => Color::Green,
        Some(Level::Warning) => Color::Yellow,
        Some(Level::Critical) => Color::Red,
        None => Color::DarkGray,
    }
}

/// Redis's state in a few words, and its style.
fn status(d: &Dashboard) -> (String, Style) {
    if let Some(why) = d.refused() {
        return (
            format!("REFUSES THE WATCH: {why}"),
            Style::default()
                .fg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
        );
    }
    match (d.reachable(), d.unreachable_for()) {
        (None, _) => ("waiting for the first poll".into(), dim()),
        (Some(true), _) => ("reachable".into(), Style::default().fg(Color::Green)),
        (Some(false), since) => (
            format!("UNREACHABLE for {}", age(since.unwrap_or_default())),
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
    }
}

/// "watching: ..." and "not watched: ..." from the coverage.
fn coverage_lines(d: &Dashboard) -> (String, String) {
    let c = d.coverage();
    let mut on = Vec::new();
    let mut off = Vec::new();
    if c.info {
        on.push("INFO");
    } else if d.reachable().is_some() {
        off.push("INFO (no answer)");
    }
    if !c.maxclients && d.reachable().is_some() {
        off.push("maxclients (INFO and CONFIG lack it)");
    }
    match c.host {
        HostView::Full => on.push("host queues+fds"),
        HostView::KernelOnly => {
            on.push("host kernel counters");
            off.push("Redis process");
        }
        HostView::None => off.push("host (not local)"),
    }
    if c.client_list {
        on.push("CLIENT LIST");
    } else {
        off.push("sources (--clients)");
    }
    match c.moat {
        Some(true) => on.push("moat"),
        Some(false) => off.push("moat (admin API silent)"),
        None => off.push("moat (--moat)"),
    }
    let join = |v: Vec<&str>| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(", ")
        }
    };
    (join(on), join(off))
}

fn draw_header(frame: &mut Frame<'_>, area: Rect, d: &Dashboard) {
    let (state, state_style) = status(d);
    let (on, off) = coverage_lines(d);
    let title = Line::from(vec![
        Span::styled(
            " moat watch ",
            Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD),
        ),
        Span::raw(" "),
        Span::styled(
            d.target().to_owned(),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::raw("  "),
        Span::styled(state, state_style),
        Span::styled(
            format!("  poll {} · {}", d.polls(), age(d.watched_for())),
            dim(),
        ),
    ]);
    let coverage = Line::from(vec![
        Span::raw(" watching: "),
        Span::styled(on, Style::default().fg(Color::Green)),
        Span::raw("  not watched: "),
        Span::styled(off, dim()),
    ]);
    frame.render_widget(Paragraph::new(vec![title, coverage]), area);
}

/// One series panel: the label line (name, current value, scale) and its sparkline.
struct SeriesView<'a> {
    name: &'a str,
    series: &'a Series,
    form: fn(f64) -> String,
    /// A fixed scale (maxclients for clients); else the largest value shown.
    scale: Option<f64>,
    scale_name: &'a str,
    color: Color,
}

fn draw_series(frame: &mut Frame<'_>, area: Rect, d: &Dashboard) {
    let block = Block::default()
        .borders(Borders::ALL)
        .title(" signals (one bar per poll) ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let maxclients = d.maxclients().map(|m| m as f64);
    let views = [
        SeriesView {
            name: "new conn/s",
            series: d.connection_rate(),
            form: number,
            scale: None,
            scale_name: "max",
            color: Color::Cyan,
        },
        SeriesView {
            name: "clients",
            series: d.clients(),
            form: count,
            scale: maxclients,
            scale_name: "of max",
            color: level_color(d.clients_level()),
        },
        SeriesView {
            name: "rejected/s",
            series: d.rejected_rate(),
            form: number,
            scale: None,
            scale_name: "max",
            color: Color::Red,
        },
        SeriesView {
            name: "used mem",
            series: d.used_memory(),
            form: bytes,
            scale: None,
            scale_name: "max",
            color: Color::Magenta,
        },
        SeriesView {
            name: "client mem",
            series: d.client_memory(),
            form: bytes,
            scale: None,
            scale_name: "max",
            color: Color::Magenta,
        },
        SeriesView {
            name: "queue drops/s",
            series: d.drops_rate(),
            form: number,
            scale: None,
            scale_name: "max",
            color: Color::Yellow,
        },
    ];
    let rows = Layout::vertical(views.iter().map(|_| Constraint::Fill(1))).split(inner);
    for (view, row) in views.iter().zip(rows.iter()) {
        draw_one_series(frame, *row, view);
    }
}

fn draw_one_series(frame: &mut Frame<'_>, area: Rect, v: &SeriesView<'_>) {
    if area.is_empty() {
        return;
    }
    let width = usize::from(area.width);
    let shown_max = v.series.max_of_tail(width);
    let scale = v.scale.or(shown_max);
    let current = or_na(v.series.latest(), v.form);
    let scale_text = scale.map_or_else(
        || "n/a".to_owned(),
        |s| format!("{} {}", v.scale_name, (v.form)(s)),
    );
    let label = Line::from(vec![
        Span::raw(format!("{:<14}", v.name)),
        Span::styled(
            format!("{current:>9}"),
            Style::default().add_modifier(Modifier::BOLD),
        ),
        Span::styled(format!("  {scale_text}"), dim()),
    ]);
    let [label_area, spark_area] =
        Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(area);
    frame.render_widget(Paragraph::new(label), label_area);
    if spark_area.is_empty() {
        return;
    }
    let scale = scale.filter(|s| *s > 0.0);
    let bars: Vec<Option<u64>> = v
        .series
        .tail(width)
        .map(|p| {
            p.map(|value| match scale {
                Some(s) => ((value / s).clamp(0.0, 1.0) * BAR_STEPS as f64).round() as u64,
                None => 0,
            })
        })
        .collect();
    frame.render_widget(
        Sparkline::default()
            .data(bars)
            .max(BAR_STEPS)
            .style(Style::default().fg(v.color))
            .absent_value_symbol("·")
            .absent_value_style(dim()),
        spark_area,
    );
}

fn draw_right(frame: &mut Frame<'_>, area: Rect, d: &Dashboard) {
    let sources = d.sources();
    let sources_height = (sources.len().max(1) as u16).saturating_add(3).min(10);
    let moat_height = if d.moat().is_some() { 7 } else { 0 };
    let [gauge, sources_area, alerts, moat] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Length(sources_height),
        Constraint::Min(3),
        Constraint::Length(moat_height),
    ])
    .areas(area);
    draw_gauge(frame, gauge, d);
    draw_sources(frame, sources_area, d, &sources);
    draw_alerts(frame, alerts, d);
    if moat_height > 0 {
        draw_moat(frame, moat, d);
    }
}

fn draw_gauge(frame: &mut Frame<'_>, area: Rect, d: &Dashboard) {
    let block = Block::default()
        .borders(Borders::ALL)
        .title(" clients / maxclients ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [bar, host] = Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(inner);
    let clients = or_na(d.clients().latest(), count);
    let max = d
        .maxclients()
        .map_or_else(|| "n/a".to_owned(), |m| m.to_string());
    match d.clients_ratio() {
        Some(ratio) => {
            let label = format!("{clients} / {max} ({:.0}%)", ratio * 100.0);
            frame.render_widget(
                Gauge::default()
                    .ratio(ratio.clamp(0.0, 1.0))
                    .label(label)
                    .gauge_style(Style::default().fg(level_color(d.clients_level()))),
                bar,
            );
        }
        None => frame.render_widget(
            Paragraph::new(format!("{clients} / {max} (n/a)")).style(dim()),
            bar,
        ),
    }
    let pair =
        |p: Option<(u64, u64)>| p.map_or_else(|| "n/a".to_owned(), |(a, b)| format!("{a}/{b}"));
    frame.render_widget(
        Paragraph::new(format!(
            "fds {} · accept queue {}",
            pair(d.fds()),
            pair(d.accept_queue())
        ))
        .style(dim()),
        host,
    );
}

fn draw_sources(
    frame: &mut Frame<'_>,
    area: Rect,
    d: &Dashboard,
    rows: &[super::state::SourceRow],
) {
    let now = d.now().unwrap_or_else(Instant::now);
    let mut block = Block::default().borders(Borders::ALL);
    block = match d.client_list() {
        Some((at, s)) => block
            .title(format!(
                " top sources (CLIENT LIST {} ago) ",
                age(now.saturating_duration_since(at))
            ))
            .title_bottom(format!(
                " {} of {} never ran a command ",
                s.never_ran, s.total
            )),
        None => block.title(" top sources "),
    };
    if rows.is_empty() {
        let text = if d.client_list().is_some() {
            "no client but the monitor"
        } else {
            "n/a: --clients samples CLIENT LIST; --moat adds moat's"
        };
        frame.render_widget(Paragraph::new(text).style(dim()).block(block), area);
        return;
    }
    let table_rows = rows.iter().map(|r| {
        Row::new(vec![
            r.source.clone(),
            r.connections.to_string(),
            r.share
                .map_or_else(|| "n/a".to_owned(), |s| format!("{:.0}%", s * 100.0)),
            match r.origin {
                SourceOrigin::Redis => "redis".to_owned(),
                SourceOrigin::Moat => "moat".to_owned(),
            },
        ])
    });
    let table = Table::new(
        table_rows,
        [
            Constraint::Fill(1),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(5),
        ],
    )
    .header(Row::new(vec!["source", "conns", "of max", "via"]).style(dim()))
    .block(block);
    frame.render_widget(table, area);
}

fn draw_alerts(frame: &mut Frame<'_>, area: Rect, d: &Dashboard) {
    let now = d.now().unwrap_or_else(Instant::now);
    let active = d.alerts();
    let title = format!(" alerts: {} active ", active.len());
    let mut lines: Vec<Line<'_>> = Vec::new();
    if active.is_empty() {
        lines.push(Line::styled(
            "no active alert",
            Style::default().fg(Color::Green),
        ));
    }
    for a in &active {
        lines.push(Line::from(vec![
            Span::styled(
                format!("{} ", severity_tag(a.severity)),
                severity_style(a.severity),
            ),
            Span::styled(
                a.id.as_str(),
                severity_style(a.severity).add_modifier(Modifier::BOLD),
            ),
            Span::raw(format!(
                " {} ago: {}",
                age(now.saturating_duration_since(a.raised_at)),
                a.summary
            )),
        ]));
    }
    for r in d.resolved() {
        lines.push(Line::styled(
            format!(
                "ok   {} ended {} ago after {}",
                r.id,
                age(now.saturating_duration_since(r.resolved_at)),
                age(r.lasted)
            ),
            dim(),
        ));
    }
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}

fn draw_moat(frame: &mut Frame<'_>, area: Rect, d: &Dashboard) {
    let Some(m) = d.moat() else { return };
    let block = Block::default()
        .borders(Borders::ALL)
        .title(" moat's view ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let opt = |v: Option<u64>| v.map_or_else(|| "n/a".to_owned(), |n| n.to_string());
    let state = if m.reachable {
        Span::styled("admin API ok", Style::default().fg(Color::Green))
    } else {
        Span::styled("admin API not answering", Style::default().fg(Color::Red))
    };
    let reasons = m
        .refused_by_reason
        .iter()
        .map(|(r, rate)| format!("{r} {}", or_na(*rate, number)))
        .collect::<Vec<_>>()
        .join(", ");
    let lines = vec![
        Line::from(vec![
            state,
            Span::raw(format!(
                " · clients {} · bans {}",
                opt(m.clients),
                opt(m.bans_active)
            )),
        ]),
        Line::raw(format!(
            "refused/s {} ({}) · admitted/s {}",
            or_na(m.refused_rate.latest(), number),
            if reasons.is_empty() {
                "n/a".to_owned()
            } else {
                reasons
            },
            or_na(m.admitted_rate, number)
        )),
        Line::raw(if m.top_refused.is_empty() {
            "most refused: none".to_owned()
        } else {
            let top: Vec<_> = m
                .top_refused
                .iter()
                .take(3)
                .map(|(source, n)| format!("{source} ({n})"))
                .collect();
            format!("most refused: {}", top.join(", "))
        }),
    ];
    let [text, spark] = Layout::vertical([Constraint::Length(3), Constraint::Fill(1)]).areas(inner);
    frame.render_widget(Paragraph::new(lines), text);
    draw_one_series(
        frame,
        spark,
        &SeriesView {
            name: "moat refused/s",
            series: &m.refused_rate,
            form: number,
            scale: None,
            scale_name: "max",
            color: Color::Red,
        },
    );
}

/// The key values as plain lines, for a terminal too small for the panels.
fn compact(frame: &mut Frame<'_>, area: Rect, d: &Dashboard) {
    let (state, _) = status(d);
    let alerts = d.alerts();
    let alert_text = if alerts.is_empty() {
        "no active alert".to_owned()
    } else {
        alerts
            .iter()
            .map(|a| format!("{} {}", severity_tag(a.severity), a.id))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ratio = d
        .clients_ratio()
        .map_or_else(|| "n/a".to_owned(), |r| format!("{:.0}%", r * 100.0));
    let lines = vec![
        Line::styled(
            format!(
                "terminal too small ({}x{} < {MIN_WIDTH}x{MIN_HEIGHT})",
                area.width, area.height
            ),
            dim(),
        ),
        Line::raw(format!("{} {state}", d.target())),
        Line::raw(alert_text),
        Line::raw(format!(
            "clients {} / {} ({ratio})",
            or_na(d.clients().latest(), count),
            d.maxclients()
                .map_or_else(|| "n/a".to_owned(), |m| m.to_string())
        )),
        Line::raw(format!(
            "new conn/s {} · rejected/s {}",
            or_na(d.connection_rate().latest(), number),
            or_na(d.rejected_rate().latest(), number)
        )),
    ];
    frame.render_widget(Paragraph::new(lines), area);
}
