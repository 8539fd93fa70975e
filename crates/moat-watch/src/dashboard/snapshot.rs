//! The dashboard as plain text: rendered into ratatui's [`TestBackend`] at a given size and
//! read back one line per row. Tests assert on it; `moat watch --snapshot FILE` writes it
//! after each poll, so a report or a bug ticket can carry exactly what the screen showed.

use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::render;
use super::state::Dashboard;

/// Renders `dashboard` at `width` x `height` and returns the frame's text: `height` lines,
/// trailing spaces trimmed, each ending in a newline. Any size works, 0 x 0 included.
pub fn snapshot(dashboard: &Dashboard, width: u16, height: u16) -> String {
    // The test backend cannot fail (its error type is `Infallible`).
    let Ok(mut terminal) = Terminal::new(TestBackend::new(width, height));
    let Ok(_) = terminal.draw(|f| render::draw(f, dashboard));
    let buffer = terminal.backend().buffer();
    let mut text = String::new();
    for y in 0..buffer.area.height {
        let mut line = String::new();
        for x in 0..buffer.area.width {
            line.push_str(buffer[(x, y)].symbol());
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}
