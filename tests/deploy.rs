//! deploy/ stays true to the binary, without kubectl or network:
//! * every `tickmesh ...` command in the `sh`/`bash` blocks of deploy/README.md names real
//!   subcommands and flags (checked against `tickmesh <subcommand...> --help`);
//! * every node configuration under deploy/ passes `tickmesh node --check-config`, each
//!   overlay has node.toml (role ingest) and gateway.toml (role gateway), both naming the
//!   overlay's region and both turned into ConfigMaps by its kustomization;
//! * the runbook covers `tickmesh admin drain`, `undrain` and `weights`.
//!
//! scripts/deploy-check.sh checks the rendered manifests themselves.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tickmesh");
const REGIONS: [&str; 6] = ["us-east-1", "eu-west-1", "ap-southeast-1", "sa-east-1", "ap-southeast-2", "me-south-1"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// The lines of the shell blocks of a Markdown text, with their 1-based line numbers;
/// lines ending in `\` are joined with the next.
fn shell_lines(md: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_shell = false;
    let mut in_other = false;
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in md.lines().enumerate() {
        let t = line.trim_start();
        if let Some(info) = t.strip_prefix("```") {
            if in_shell || in_other {
                in_shell = false;
                in_other = false;
            } else if matches!(info.trim(), "sh" | "bash" | "shell" | "console") {
                in_shell = true;
            } else {
                in_other = true;
            }
            continue;
        }
        if !in_shell {
            continue;
        }
        let (start, mut text) = pending.take().unwrap_or((i + 1, String::new()));
        match line.strip_suffix('\\') {
            Some(head) => {
                text.push_str(head);
                text.push(' ');
                pending = Some((start, text));
            }
            None => {
                text.push_str(line);
                out.push((start, text));
            }
        }
    }
    out
}

#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    /// Anything that ends a simple command: `|`, `&&`, `;`, `$(`, `)`, redirections.
    Sep,
}

/// Shell-like tokens: quotes group, `#` at a word start comments out the rest.
fn tokens(line: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let flush = |out: &mut Vec<Tok>, word: &mut String, in_word: &mut bool| {
        if *in_word {
            out.push(Tok::Word(std::mem::take(word)));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == c {
                        break;
                    }
                    word.push(q);
                }
            }
            ' ' | '\t' => flush(&mut out, &mut word, &mut in_word),
            '#' if !in_word => break,
            '|' | '&' | ';' | '(' | ')' | '<' | '>' | '`' => {
                flush(&mut out, &mut word, &mut in_word);
                out.push(Tok::Sep);
            }
            '$' if chars.peek() == Some(&'(') => {
                chars.next();
                flush(&mut out, &mut word, &mut in_word);
                out.push(Tok::Sep);
            }
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    flush(&mut out, &mut word, &mut in_word);
    out
}

fn is_tickmesh(word: &str) -> bool {
    word.rsplit('/').next() == Some("tickmesh")
}

/// The arguments of every `tickmesh` invocation on a line: the program at the start of
/// a simple command (after assignments and words such as `do`, `sudo`, `exec`), or after
/// the `--` of a wrapper such as `kubectl exec POD --`.
fn invocations(line: &str) -> Vec<Vec<String>> {
    let mut commands: Vec<Vec<String>> = vec![Vec::new()];
    for t in tokens(line) {
        match t {
            Tok::Word(w) => commands.last_mut().expect("one command").push(w),
            Tok::Sep => commands.push(Vec::new()),
        }
    }
    let mut out = Vec::new();
    for cmd in commands {
        let mut rest = cmd.as_slice();
        while let Some((first, tail)) = rest.split_first() {
            let assignment = first
                .split_once('=')
                .is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            if assignment || matches!(first.as_str(), "do" | "then" | "else" | "time" | "exec" | "sudo" | "env" | "!") {
                rest = tail;
            } else {
                break;
            }
        }
        if let Some((first, args)) = rest.split_first() {
            if is_tickmesh(first) {
                out.push(args.to_vec());
                continue;
            }
        }
        if let Some(pos) = rest.iter().position(|w| w == "--") {
            if let Some((first, args)) = rest[pos + 1..].split_first() {
                if is_tickmesh(first) {
                    out.push(args.to_vec());
                }
            }
        }
    }
    out
}

/// `tickmesh ... --help` texts, cached per subcommand path.
#[derive(Default)]
struct Cli {
    help: HashMap<Vec<String>, String>,
}

/// Whether `flag` appears in `help` as an option name (not as part of a longer one).
fn mentions_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        let before = help[..i].chars().next_back();
        let after = help[i + flag.len()..].chars().next();
        matches!(before, Some(' ' | ',' | '[')) && matches!(after, None | Some(' ' | '\n' | '=' | ']' | '\r'))
    })
}

/// Whether the help shows `flag` taking a value (`--flag <VALUE>`).
fn takes_value(help: &str, flag: &str) -> bool {
    help.lines()
        .any(|l| l.trim_start().split(", ").any(|part| part.strip_prefix(flag).is_some_and(|r| r.starts_with(" <"))))
}

/// The names under "Commands:" of a help text.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect()
}

impl Cli {
    fn help(&mut self, path: &[String]) -> &str {
        self.help.entry(path.to_vec()).or_insert_with(|| {
            let out = Command::new(BIN).args(path).arg("--help").output().expect("run tickmesh --help");
            assert!(
                out.status.success(),
                "tickmesh {} --help failed: {}",
                path.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).expect("help is UTF-8")
        })
    }

    /// Checks one invocation's subcommands and flags against the binary.
    fn check(&mut self, args: &[String]) -> Result<(), String> {
        let mut path: Vec<String> = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let a = &args[i];
            if a.starts_with('-') && a.len() > 1 {
                let flag = a.split('=').next().unwrap_or(a);
                let help = self.help(&path).to_owned();
                if !mentions_flag(&help, flag) {
                    return Err(format!("`tickmesh {}` has no flag {flag}", path.join(" ")));
                }
                if !a.contains('=') && takes_value(&help, flag) {
                    i += 1;
                }
            } else {
                let subs = subcommands(self.help(&path));
                if subs.iter().any(|s| s == a) {
                    path.push(a.clone());
                } else if path.is_empty() {
                    return Err(format!("tickmesh has no subcommand {a:?}; it has {subs:?}"));
                }
            }
            i += 1;
        }
        let subs = subcommands(self.help(&path));
        if !subs.is_empty() {
            return Err(format!("`tickmesh {}` needs a subcommand, one of {subs:?}", path.join(" ")));
        }
        Ok(())
    }
}

#[test]
fn runbook_commands_use_real_subcommands_and_flags() {
    let readme = deploy_dir().join("README.md");
    let md = std::fs::read_to_string(&readme).expect("deploy/README.md");
    let mut cli = Cli::default();
    let mut problems = Vec::new();
    let mut checked = Vec::new();
    for (line_no, line) in shell_lines(&md) {
        for args in invocations(&line) {
            match cli.check(&args) {
                Ok(()) => checked.push(args.clone()),
                Err(e) => problems.push(format!("deploy/README.md:{line_no}: {e}\n    {}", line.trim())),
            }
        }
    }
    assert!(problems.is_empty(), "runbook commands that the binary does not accept:\n{}", problems.join("\n"));
    for sub in ["node", "certs", "token", "admin", "backup", "recover", "audit"] {
        assert!(
            checked.iter().any(|c| c.first().is_some_and(|f| f == sub)),
            "the runbook has no `tickmesh {sub}` command left to check: {checked:?}"
        );
    }
    // Draining a region: every admin subcommand the runbook explains is there and checked.
    for sub in ["drain", "undrain", "weights"] {
        assert!(
            checked.iter().any(|c| c.len() > 1 && c[0] == "admin" && c[1] == sub),
            "the runbook has no `tickmesh admin {sub}` command left to check: {checked:?}"
        );
    }
}

#[test]
fn command_checker_catches_mistakes() {
    let mut cli = Cli::default();
    let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    assert!(cli.check(&args("certs issue eu-west-1 --dir pki --days 90")).is_ok());
    assert!(cli.check(&args("node --config x.toml --check-config")).is_ok());
    assert!(cli.check(&args("certs issue eu-west-1 --directory pki")).is_err());
    assert!(cli.check(&args("certs")).is_err(), "a group without its subcommand");
    assert!(cli.check(&args("cert init")).is_err());
    assert!(cli.check(&args("node --config x.toml --check")).is_err(), "a prefix of a real flag");

    let line =
        r#"ADMIN=$(tickmesh token --key hs256.key --sub ops --roles admin --ttl 15m) && kubectl -n tickmesh get pods"#;
    let found = invocations(line);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0][0], "token");
    let found = invocations("kubectl -n tickmesh exec tickmesh-ingest-0 -- tickmesh node --config /x --check-config");
    assert_eq!(found, vec![args("node --config /x --check-config")]);
    assert!(invocations("kubectl -n tickmesh logs tickmesh-ingest-0 | grep tickmesh_gateway").is_empty());
    assert_eq!(invocations("for r in a b; do ./target/release/tickmesh certs issue \"$r\"; done").len(), 1);
    assert!(invocations("echo hi # tickmesh node --nope").is_empty());

    let md = "text\n```sh\ntickmesh certs issue a \\\n  --dir pki\n```\n```toml\ntickmesh = 1\n```\n";
    assert_eq!(shell_lines(md), vec![(3, "tickmesh certs issue a    --dir pki".to_owned())]);
}

fn node_configs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read deploy/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            node_configs(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
}

#[test]
fn every_node_config_in_deploy_passes_check_config() {
    let mut files = Vec::new();
    node_configs(&deploy_dir(), &mut files);
    files.sort();
    for region in REGIONS {
        for name in ["node.toml", "gateway.toml"] {
            let f = deploy_dir().join("overlays").join(region).join(name);
            assert!(files.contains(&f), "deploy/overlays/{region}/{name} is missing");
        }
    }
    let mut problems = Vec::new();
    for f in &files {
        let out =
            Command::new(BIN).arg("node").arg("--config").arg(f).arg("--check-config").output().expect("run tickmesh");
        if !out.status.success() {
            problems.push(format!("{}:\n{}", f.display(), String::from_utf8_lossy(&out.stderr)));
            continue;
        }
        // An overlay's node.toml is for the overlay's region.
        if let Some(dir) = f.parent().filter(|d| d.parent().is_some_and(|p| p.ends_with("overlays"))) {
            let want = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let text = std::fs::read_to_string(f).expect("read node.toml");
            let v: toml::Value = toml::from_str(&text).expect("node.toml parsed by --check-config");
            let region = v.get("region").and_then(|r| r.as_str()).unwrap_or_default();
            if region != want {
                problems.push(format!("{}: region = {region:?} in the overlay of {want}", f.display()));
            }
            // node.toml is the ingest node's, gateway.toml the gateways'.
            let file = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let want_role = match file {
                "node.toml" => "ingest",
                "gateway.toml" => "gateway",
                other => {
                    problems.push(format!(
                        "{}: unexpected {other}; an overlay holds node.toml and gateway.toml",
                        f.display()
                    ));
                    continue;
                }
            };
            let role = v.get("role").and_then(|r| r.as_str()).unwrap_or("all");
            if role != want_role {
                problems.push(format!("{}: role = {role:?}; {file} is for role {want_role:?}", f.display()));
            }
            let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap_or_default();
            if !kustomization.contains(file) {
                problems
                    .push(format!("{}: kustomization.yaml does not generate a ConfigMap from {file}", dir.display()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The `/v1/...` admin paths a text names (`/v1/admin/drain`, ...), in order of appearance.
fn admin_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("/v1/admin/") {
        let rest = &text[i..];
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '/' || c == '_')).unwrap_or(rest.len());
        let path = rest[..end].trim_end_matches('/').to_owned();
        // `/v1/admin/*` names the group, not a route.
        if path.len() > "/v1/admin".len() && !out.contains(&path) {
            out.push(path);
        }
    }
    out
}

#[test]
fn runbook_admin_http_paths_are_routes_of_the_binary() {
    let md = std::fs::read_to_string(deploy_dir().join("README.md")).expect("deploy/README.md");
    let src_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut routes = String::new();
    for entry in std::fs::read_dir(&src_dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            routes.push_str(&std::fs::read_to_string(&path).expect("read a source file"));
        }
    }
    let used = admin_paths(&md);
    for want in ["/v1/admin/drain", "/v1/admin/undrain", "/v1/admin/weights"] {
        assert!(used.iter().any(|p| p == want), "the runbook does not show the HTTP API {want}: {used:?}");
    }
    let unknown: Vec<&String> = used.iter().filter(|p| !routes.contains(&format!(".route(\"{p}\""))).collect();
    assert!(unknown.is_empty(), "deploy/README.md names admin paths the binary does not route: {unknown:?}");
    assert_eq!(
        admin_paths("x /v1/admin/drain, y `/v1/admin/weights` /v1/admin/drain /v1/admin/*"),
        ["/v1/admin/drain", "/v1/admin/weights"]
    );
}
