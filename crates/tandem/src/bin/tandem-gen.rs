//! Writes what a package installs beside the binary, from the sources it documents:
//! the man pages tandem(8) (from the command line) and tandem.toml(5) (from
//! docs/configuration.md), and the bash, zsh and fish completions.
//!
//! ```text
//! tandem-gen man DIR           DIR/tandem.8, DIR/tandem-SUBCOMMAND.8, DIR/tandem.toml.5
//! tandem-gen completions DIR   DIR/tandem.bash, DIR/_tandem, DIR/tandem.fish
//! ```

use std::path::Path;
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;
use tandem::cli::Cli;

/// The configuration reference, the source of tandem.toml(5).
const CONFIGURATION: &str = include_str!("../../../../docs/configuration.md");

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [what, dir] if what == "man" => man(Path::new(dir)),
        [what, dir] if what == "completions" => completions(Path::new(dir)),
        _ => {
            eprintln!("usage: tandem-gen man DIR | tandem-gen completions DIR");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem-gen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn man(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    let version = cmd.get_version().unwrap_or("").to_string();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .source(format!("tandem {version}"))
        .render(&mut page)?;
    page.extend_from_slice(SEE_ALSO.as_bytes());
    std::fs::write(dir.join("tandem.8"), page)?;
    for sub in cmd.get_subcommands() {
        // clap names are 'static: a generator that runs once may leak a few.
        let name: &'static str = format!("tandem-{}", sub.get_name()).leak();
        let mut page = Vec::new();
        clap_mangen::Man::new(sub.clone().name(name))
            .section("8")
            .manual("System Administration")
            .source(format!("tandem {version}"))
            .render(&mut page)?;
        std::fs::write(dir.join(format!("{name}.8")), page)?;
    }
    std::fs::write(
        dir.join("tandem.toml.5"),
        markdown_to_man(CONFIGURATION, &version),
    )
}

const SEE_ALSO: &str = ".SH \"SEE ALSO\"\n\\fBtandem.toml\\fR(5), \\fBtandem\\-run\\fR(8), \\fBtandem\\-check\\fR(8), \\fBtandem\\-ctl\\fR(8), \\fBtandem\\-upgrade\\fR(8), \\fBsystemctl\\fR(1)\n.PP\n/usr/share/doc/tandem/ holds the operations guide and example configurations.\n";

fn completions(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (shell, file) in [
        (Shell::Bash, "tandem.bash"),
        (Shell::Zsh, "_tandem"),
        (Shell::Fish, "tandem.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "tandem", &mut out);
        std::fs::write(dir.join(file), out)?;
    }
    Ok(())
}

/// The configuration reference as a man page: headings become sections, tables
/// become tagged paragraphs (one per row: the first cell, then the others by their
/// column names), code blocks stay as written.
fn markdown_to_man(markdown: &str, version: &str) -> String {
    let mut out = format!(
        ".TH TANDEM.TOML 5 \"\" \"tandem {version}\" \"File Formats\"\n.SH NAME\ntandem.toml \\- configuration of the tandem load balancer\n"
    );
    let mut in_code = false;
    let mut table_head: Option<Vec<String>> = None;
    let mut paragraph_open = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            if in_code {
                out += ".fi\n.RE\n";
            } else {
                out += ".PP\n.RS 4\n.nf\n";
            }
            in_code = !in_code;
            paragraph_open = false;
            continue;
        }
        if in_code {
            out += &escape(line);
            out.push('\n');
            continue;
        }
        if let Some(cells) = table_row(line) {
            if cells
                .iter()
                .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
            {
                continue;
            }
            match &table_head {
                None => table_head = Some(cells),
                Some(head) => {
                    out += ".TP\n";
                    out += &format!("\\fB{}\\fR\n", inline(&cells[0]));
                    for (name, cell) in head.iter().zip(&cells).skip(1) {
                        out += &format!("{}: {}\n.br\n", inline(name), inline(cell));
                    }
                }
            }
            paragraph_open = false;
            continue;
        }
        table_head = None;
        if let Some(title) = line.strip_prefix("# ") {
            // The page's own title: the NAME section says it.
            let _ = title;
            continue;
        }
        if let Some(title) = line.strip_prefix("## ") {
            out += &format!(".SH \"{}\"\n", inline(title).to_uppercase());
            paragraph_open = false;
            continue;
        }
        if let Some(title) = line.strip_prefix("### ") {
            out += &format!(".SS \"{}\"\n", inline(title));
            paragraph_open = false;
            continue;
        }
        if line.trim().is_empty() {
            paragraph_open = false;
            continue;
        }
        if let Some(item) = line.strip_prefix("- ") {
            out += &format!(".IP \\(bu 2\n{}\n", inline(item));
            paragraph_open = true;
            continue;
        }
        if !paragraph_open {
            out += ".PP\n";
            paragraph_open = true;
        }
        out += &inline(line.trim_start());
        out.push('\n');
    }
    out
}

/// The cells of a Markdown table row, or `None` for other lines.
fn table_row(line: &str) -> Option<Vec<String>> {
    let inner = line.trim().strip_prefix('|')?.strip_suffix('|')?;
    Some(inner.split('|').map(|c| c.trim().to_string()).collect())
}

/// Inline Markdown as roff: `code` and **strong** in bold, links as their text.
fn inline(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '`'
            && let Some(end) = rest[1..].find('`')
        {
            out += &format!("\\fB{}\\fR", escape(&rest[1..1 + end]));
            rest = &rest[end + 2..];
        } else if let Some(body) = rest.strip_prefix("**")
            && let Some(end) = body.find("**")
        {
            out += &format!("\\fB{}\\fR", escape(&body[..end]));
            rest = &body[end + 2..];
        } else if c == '['
            && let Some(close) = rest.find("](")
            && let Some(end) = rest[close..].find(')')
        {
            out += &inline(&rest[1..close]);
            rest = &rest[close + end + 1..];
        } else {
            out += &escape(&rest[..c.len_utf8()]);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Escapes roff's specials: backslashes, hyphens, characters beyond ASCII (as
/// `\[uXXXX]`), and a line that would start a request.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => escaped += "\\e",
            '-' => escaped += "\\-",
            c if c.is_ascii() => escaped.push(c),
            c => escaped += &format!("\\[u{:04X}]", c as u32),
        }
    }
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}
