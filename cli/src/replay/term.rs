//! What the command prints for people at a terminal, shared by `replay` and `check`: whether to
//! use colours, aligned tables, and the "compiling ..." progress line.
//!
//! Colours come from `anstyle`: the ANSI style type that clap itself renders its help with, so
//! it is already in the build (no new crate), is a single small dependency-free crate, and only
//! formats escape sequences; when to use them is decided here, in [`color_enabled`]. The table
//! is a few lines of code rather than a table crate: the columns are fixed, and what matters
//! (the display width of ids and notes) is `unicode-width`'s, already in the workspace's lock
//! file too.

use std::{
    ffi::OsStr,
    io::{IsTerminal, Write},
};

use anstyle::{AnsiColor, Style};
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// Whether to colour a stream: only a terminal, and neither `NO_COLOR` (set and not empty, see
/// <https://no-color.org>) nor `TERM=dumb`. The one place the decision is made; the renderers
/// take its answer as a `color: bool`.
pub fn color_enabled(is_terminal: bool, no_color: Option<&OsStr>, term: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty) && term != Some(OsStr::new("dumb"))
}

/// [`color_enabled`] for `stream` (stdout or stderr) and this process's environment.
pub fn color_for(stream: &impl IsTerminal) -> bool {
    color_enabled(
        stream.is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
        std::env::var_os("TERM").as_deref(),
    )
}

/// What the terminal is: the one place the command asks whether stdout and stderr are
/// terminals, and may be coloured.
#[derive(Debug, Clone, Copy)]
pub struct Terminal {
    /// stdout is a terminal: tables rather than JSON lines or the long form.
    pub stdout: bool,
    /// stderr is a terminal: the progress line.
    pub stderr: bool,
    /// Colours on stdout.
    pub stdout_color: bool,
    /// Colours on stderr.
    pub stderr_color: bool,
}

impl Terminal {
    /// Ask this process's stdout, stderr and environment.
    pub fn detect() -> Self {
        let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
        Self {
            stdout: stdout.is_terminal(),
            stderr: stderr.is_terminal(),
            stdout_color: color_for(&stdout),
            stderr_color: color_for(&stderr),
        }
    }
}

/// How a piece of text is shown when colours are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tone {
    /// As is.
    #[default]
    Plain,
    /// Dimmed: what is there for completeness.
    Dim,
    /// Bold: headers.
    Bold,
    /// Green: a pass, an allow, a valid configuration.
    Good,
    /// Yellow: a deny, a refusal that is not a failure.
    Warn,
    /// Bold red: a failure, an error.
    Bad,
}

impl Tone {
    fn style(self) -> Style {
        let fg = |c: AnsiColor| Style::new().fg_color(Some(c.into()));
        match self {
            Tone::Plain => Style::new(),
            Tone::Dim => Style::new().dimmed(),
            Tone::Bold => Style::new().bold(),
            Tone::Good => fg(AnsiColor::Green),
            Tone::Warn => fg(AnsiColor::Yellow),
            Tone::Bad => fg(AnsiColor::Red).bold(),
        }
    }
}

/// `text` in `tone`, or `text` alone without colours.
pub fn paint(text: &str, tone: Tone, color: bool) -> String {
    let style = tone.style();
    if !color || style == Style::new() || text.is_empty() {
        return text.to_owned();
    }
    format!("{style}{text}{style:#}")
}

/// `text` made safe for a terminal: control characters (an escape sequence in a plugin's error
/// message, a newline in a note) are shown escaped instead of acting on the terminal.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    out
}

/// `text` cut to at most `max` columns of display width, ending in `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.width() <= max {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut width = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if width + w + 1 > max {
            break;
        }
        width += w;
        out.push(c);
    }
    out.push('…');
    out
}

/// One cell of a [`Table`]: sanitized text, and its tone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cell {
    text: String,
    tone: Tone,
}

impl Cell {
    /// A cell showing `text` (sanitized, cut to `max` columns) in `tone`.
    pub fn new(text: &str, tone: Tone, max: usize) -> Self {
        Self {
            text: truncate(&sanitize(text), max),
            tone,
        }
    }

    /// A plain cell, at most `max` columns.
    pub fn plain(text: &str, max: usize) -> Self {
        Self::new(text, Tone::Plain, max)
    }

    /// The text shown, without colours.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Where a column's cells sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A table of aligned columns with an upper-case header, two spaces between columns, the last
/// column unpadded (a long note wraps there without shifting the others).
#[derive(Debug, Clone, Default)]
pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Self {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Add a row (missing cells are empty, extra ones ignored).
    pub fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row after the header, each ending in a newline.
    pub fn render(&self, color: bool) -> String {
        const EMPTY: &Cell = &Cell {
            text: String::new(),
            tone: Tone::Plain,
        };
        fn cell(row: &[Cell], i: usize) -> &Cell {
            row.get(i).unwrap_or(EMPTY)
        }
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| cell(r, i).text.width())
                    .chain([self.columns[i].0.width()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let header: Vec<Cell> = self
            .columns
            .iter()
            .map(|(name, _)| Cell {
                text: (*name).to_owned(),
                tone: Tone::Bold,
            })
            .collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (&(_, align), &width)) in self.columns.iter().zip(&widths).enumerate() {
                let c = cell(row, i);
                let pad = " ".repeat(width.saturating_sub(c.text.width()));
                let last = i + 1 == self.columns.len();
                if i > 0 {
                    line.push_str("  ");
                }
                if align == Align::Right {
                    line.push_str(&pad);
                }
                line.push_str(&paint(&c.text, c.tone, color));
                if align == Align::Left && !last {
                    line.push_str(&pad);
                }
            }
            out.push_str(line.trim_end_matches(' '));
            out.push('\n');
        }
        out
    }
}

/// The transient "compiling consent.wasm (1/4)..." line on a terminal's stderr while plugins
/// compile: each message replaces the previous one, and [`Progress::clear`] (or dropping it)
/// erases it, so that it never stays between the lines of the real output. Without a writer
/// (stderr is not a terminal) it prints nothing.
pub struct Progress<'a> {
    out: Option<&'a mut dyn Write>,
    shown: bool,
}

impl<'a> Progress<'a> {
    /// Progress on `out`, or none.
    pub fn new(out: Option<&'a mut dyn Write>) -> Self {
        Self { out, shown: false }
    }

    /// Show `message` (sanitized) in place of the previous one.
    pub fn show(&mut self, message: &str) {
        if let Some(out) = self.out.as_deref_mut() {
            let _ = write!(out, "\r\x1b[2K{}", sanitize(message));
            let _ = out.flush();
            self.shown = true;
        }
    }

    /// Erase the line, if one is shown.
    pub fn clear(&mut self) {
        if let Some(out) = self.out.as_deref_mut()
            && self.shown
        {
            let _ = write!(out, "\r\x1b[2K");
            let _ = out.flush();
            self.shown = false;
        }
    }
}

impl Drop for Progress<'_> {
    fn drop(&mut self) {
        self.clear();
    }
}

/// The message of [`Progress`] before a plugin compiles: `compiling NAME (N/TOTAL)...`, NAME
/// being the file name of `path`.
pub fn compiling(path: &std::path::Path, n: usize, total: usize) -> String {
    let name = path
        .file_name()
        .map(|f| f.to_string_lossy())
        .unwrap_or_else(|| path.to_string_lossy());
    format!("compiling {name} ({n}/{total})...")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        let os = |s: &'static str| Some(OsStr::new(s));
        assert!(color_enabled(true, None, os("xterm-256color")));
        assert!(color_enabled(true, None, None));
        assert!(
            color_enabled(true, os(""), None),
            "an empty NO_COLOR is unset"
        );
        assert!(!color_enabled(false, None, os("xterm")));
        assert!(!color_enabled(true, os("1"), os("xterm")));
        assert!(!color_enabled(true, None, os("dumb")));
    }

    #[test]
    fn paint_adds_escapes_only_with_colour() {
        assert_eq!(paint("PASS", Tone::Good, false), "PASS");
        assert_eq!(paint("PASS", Tone::Plain, true), "PASS");
        let painted = paint("FAIL", Tone::Bad, true);
        assert!(
            painted.starts_with("\x1b[") && painted.contains("FAIL"),
            "{painted:?}"
        );
        assert!(painted.ends_with("\x1b[0m"), "{painted:?}");
    }

    #[test]
    fn cells_are_sanitized_and_cut_by_display_width() {
        assert_eq!(sanitize("a\nb\x1b[31mc"), "a b\\u{1b}[31mc");
        assert_eq!(truncate("abcdef", 6), "abcdef");
        assert_eq!(truncate("abcdefg", 6), "abcde…");
        // Wide characters count two columns.
        assert_eq!(truncate("日本語テキスト", 7), "日本語…");
        assert_eq!(Cell::plain("x\u{7}y", 10).text(), "x\\u{7}y");
    }

    #[test]
    fn tables_align_by_display_width() {
        let mut t = Table::new(&[
            ("N", Align::Right),
            ("NAME", Align::Left),
            ("NOTE", Align::Left),
        ]);
        t.row(vec![
            Cell::plain("1", 9),
            Cell::plain("日本", 9),
            Cell::plain("x", 9),
        ]);
        t.row(vec![Cell::plain("10", 9), Cell::plain("abcde", 9)]);
        assert_eq!(
            t.render(false),
            " N  NAME   NOTE\n 1  日本   x\n10  abcde\n"
        );
        let colored = t.render(true);
        assert!(colored.contains("\x1b["), "the header is bold: {colored:?}");
    }

    #[test]
    fn progress_replaces_its_line_and_erases_it() {
        let mut buf = Vec::new();
        {
            let mut p = Progress::new(Some(&mut buf));
            p.show(&compiling(std::path::Path::new("/p/consent.wasm"), 1, 2));
            p.show(&compiling(std::path::Path::new("erasure.wasm"), 2, 2));
        }
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "\r\x1b[2Kcompiling consent.wasm (1/2)...\r\x1b[2Kcompiling erasure.wasm (2/2)...\r\x1b[2K"
        );
        let mut p = Progress::new(None);
        p.show("nothing");
        p.clear();
    }
}
