//! The interactive terminal: raw mode and the alternate screen while the dashboard runs,
//! restored however it ends (return, error, panic), and the keys that end it.
//!
//! - [`Tui`]: owns the terminal; dropping it restores the screen. A panic hook installed
//!   once restores it too, before the panic message is printed, so the message is readable
//!   and the shell is not left in raw mode.
//! - [`Inputs`]: a thread reading key and resize events (crossterm's reads block), handing
//!   them to the async poll loop as [`Input`]s through a bounded channel.
//! - [`classify`]: pure: which events quit (`q`, Esc, Ctrl-C: in raw mode Ctrl-C is a key,
//!   not a signal) and which are resizes.

use std::io::{self, Stdout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::{cursor, execute, terminal};

use super::render;
use super::state::Dashboard;

/// Whether the terminal is in raw mode on the alternate screen (so restoring is done once,
/// and a panic after a clean exit does not write escape codes).
static ACTIVE: AtomicBool = AtomicBool::new(false);
static PANIC_HOOK: Once = Once::new();

/// The terminal while the dashboard owns it.
pub struct Tui {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl std::fmt::Debug for Tui {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tui").finish_non_exhaustive()
    }
}

impl Tui {
    /// Enters raw mode and the alternate screen, hiding the cursor. Fails (restoring what
    /// was changed) when stdout is not a terminal.
    pub fn enter() -> io::Result<Self> {
        use std::io::IsTerminal;
        // Raw mode works through /dev/tty even when stdout is a pipe: refuse rather than
        // draw escape codes into a file.
        if !io::stdout().is_terminal() {
            return Err(io::Error::other("stdout is not a terminal"));
        }
        install_panic_hook();
        terminal::enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        let entered = execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)
            .and_then(|()| Terminal::new(CrosstermBackend::new(io::stdout())));
        match entered {
            Ok(terminal) => Ok(Self { terminal }),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }

    /// Redraws the dashboard at the terminal's current size.
    pub fn draw(&mut self, dashboard: &Dashboard) -> io::Result<()> {
        self.terminal
            .draw(|frame| render::draw(frame, dashboard))
            .map(|_| ())
    }

    /// The terminal's size (columns, rows).
    pub fn size(&self) -> io::Result<(u16, u16)> {
        let size = self.terminal.size()?;
        Ok((size.width, size.height))
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves the alternate screen and raw mode, showing the cursor; does nothing when the
/// terminal is not taken. Errors are ignored: this runs on the way out, often on a panic.
pub fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = terminal::disable_raw_mode();
        let _ = execute!(io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
    }
}

fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// What a terminal event means to the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// `q`, Esc or Ctrl-C: leave.
    Quit,
    /// The terminal was resized: redraw now.
    Resize,
    /// Anything else.
    Other,
}

/// Classifies one crossterm event.
pub fn classify(event: &Event) -> Input {
    match event {
        Event::Key(key) if key.kind != KeyEventKind::Release => match key.code {
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => Input::Quit,
            KeyCode::Char('c' | 'C') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                Input::Quit
            }
            _ => Input::Other,
        },
        Event::Resize(..) => Input::Resize,
        _ => Input::Other,
    }
}

/// Terminal events from a reader thread, for an async loop.
#[derive(Debug)]
pub struct Inputs {
    rx: tokio::sync::mpsc::Receiver<Input>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Inputs {
    /// Starts the reader thread. It waits for events in slices of 100 ms, so it notices
    /// within that when it is dropped; a read error ends it (and [`Inputs::next`] then
    /// returns `None`).
    pub fn spawn() -> io::Result<Self> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("moat-watch-keys".into())
            .spawn(move || {
                while !stopped.load(Ordering::SeqCst) {
                    match event::poll(Duration::from_millis(100)) {
                        Ok(false) => continue,
                        Ok(true) => {}
                        Err(_) => return,
                    }
                    let Ok(ev) = event::read() else { return };
                    let input = classify(&ev);
                    if input != Input::Other && tx.blocking_send(input).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self {
            rx,
            stop,
            thread: Some(thread),
        })
    }

    /// The next quit or resize; `None` once the reader has ended.
    pub async fn next(&mut self) -> Option<Input> {
        self.rx.recv().await
    }
}

impl Drop for Inputs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.rx.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use ratatui::crossterm::event::{KeyEvent, KeyEventState};

    use super::*;

    fn key(code: KeyCode, modifiers: KeyModifiers) -> Event {
        Event::Key(KeyEvent {
            code,
            modifiers,
            kind: KeyEventKind::Press,
            state: KeyEventState::NONE,
        })
    }

    #[test]
    fn q_esc_and_ctrl_c_quit_and_nothing_else_does() {
        assert_eq!(
            classify(&key(KeyCode::Char('q'), KeyModifiers::NONE)),
            Input::Quit
        );
        assert_eq!(
            classify(&key(KeyCode::Esc, KeyModifiers::NONE)),
            Input::Quit
        );
        assert_eq!(
            classify(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Input::Quit
        );
        assert_eq!(
            classify(&key(KeyCode::Char('c'), KeyModifiers::NONE)),
            Input::Other
        );
        assert_eq!(
            classify(&key(KeyCode::Enter, KeyModifiers::NONE)),
            Input::Other
        );
        assert_eq!(classify(&Event::Resize(80, 24)), Input::Resize);
        assert_eq!(classify(&Event::FocusGained), Input::Other);
        // Restoring a terminal never taken is a no-op (no escape codes into test output).
        restore();
    }
}
