//! `--config FILE` (or `GLIMPSE_CONFIG`): a TOML file whose keys are the variables' names without the
//! `GLIMPSE_` prefix, in snake case (`bind = "0.0.0.0:8080"`, `database_url = "…"`).
//!
//! The file is the lowest layer under the command line: each key becomes the default value of
//! every flag that reads its variable, so clap's own order gives flags, then variables, then the
//! file, then the built-in defaults, and the process environment is never written. The keys are
//! checked against the variables the commands read, so a misspelt key is an error naming it
//! rather than a setting silently ignored, and each value is run through its flag's parser at
//! once, so a bad one is reported with the file and key it came from.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::error::ErrorKind;
use clap::{Arg, Command, CommandFactory};

use crate::cli::Cli;

/// The variable that names the file; not a key the file itself may set.
const CONFIG_VAR: &str = "GLIMPSE_CONFIG";

/// `Cli`'s command, with the settings of the file named by `args` or `GLIMPSE_CONFIG` (if any) as
/// its defaults.
pub fn command(args: &[OsString]) -> anyhow::Result<Command> {
    let cmd = Cli::command();
    match path_from(args, std::env::var_os(CONFIG_VAR)) {
        Some(path) => with_file(cmd, &path),
        None => Ok(cmd),
    }
}

/// The file to read: the last `--config` on the command line, else the variable. clap reads the
/// same flag again later; it is looked for here first because the file changes how the rest of
/// the command line is read.
fn path_from(args: &[OsString], var: Option<OsString>) -> Option<PathBuf> {
    let mut path = var.map(PathBuf::from);
    let mut args = args.iter().skip(1);
    while let Some(a) = args.next() {
        let a = a.to_string_lossy();
        if a == "--" {
            break;
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(p.into());
        } else if a == "--config" {
            path = args.next().map(PathBuf::from);
        }
    }
    path
}

/// `cmd` with the file at `path` applied beneath its variables.
pub fn with_file(cmd: Command, path: &Path) -> anyhow::Result<Command> {
    let settings = read(path)?;
    let mut known = Vec::new();
    variables(&cmd, &mut known);
    for (key, (var, values)) in &settings {
        if var == CONFIG_VAR || !known.contains(var) {
            bail!(
                "config file {}: unknown key '{key}' (keys are the names of the GLIMPSE_* \
                 variables without the prefix, in snake case)",
                path.display()
            );
        }
        check(&cmd, var, values)
            .map_err(|why| anyhow::anyhow!("config file {}: key '{key}': {why}", path.display()))?;
    }
    let by_var = settings.into_values().collect();
    Ok(set_defaults(cmd, &by_var))
}

/// Every variable read by `cmd` or one of its subcommands.
fn variables(cmd: &Command, out: &mut Vec<String>) {
    out.extend(cmd.get_arguments().filter_map(env_name).map(str::to_string));
    for sub in cmd.get_subcommands() {
        variables(sub, out);
    }
}

fn env_name(arg: &Arg) -> Option<&str> {
    arg.get_env().and_then(|e| e.to_str())
}

/// Runs `values` through the parser of every flag that reads `var`, as clap will when that
/// command runs: a copy of the command reads no variable and has only this flag's default
/// replaced, so a value error is this value's. Other errors (a missing argument) are not.
fn check(cmd: &Command, var: &str, values: &[String]) -> Result<(), String> {
    if let Some(arg) = cmd.get_arguments().find(|a| env_name(a) == Some(var)) {
        let id = arg.get_id().as_str().to_string();
        let probe = cmd
            .clone()
            .mut_args(|a| a.env(None::<&str>))
            .mut_arg(id, |a| a.default_values(values.to_vec()));
        if let Err(e) = probe.try_get_matches_from([cmd.get_name()]) {
            if matches!(
                e.kind(),
                ErrorKind::InvalidValue | ErrorKind::ValueValidation
            ) {
                // clap's message without its "error: " and the usage hint after it.
                let msg = e.to_string();
                let msg = msg.split("\n\n").next().unwrap_or_default();
                return Err(msg.trim_start_matches("error: ").trim().to_string());
            }
        }
    }
    cmd.get_subcommands()
        .try_for_each(|sub| check(sub, var, values))
}

/// Makes the file's values the defaults of the flags that read their variables, in `cmd` and its
/// subcommands. A value that stands for a secret stays out of `--help`, as its variable does.
fn set_defaults(cmd: Command, by_var: &BTreeMap<String, Vec<String>>) -> Command {
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    let mut cmd = cmd.mut_args(|a| match env_name(&a).and_then(|v| by_var.get(v)) {
        Some(values) => {
            let hide = a.is_hide_env_values_set() || a.is_hide_default_value_set();
            a.default_values(values.clone()).hide_default_value(hide)
        }
        None => a,
    });
    for name in subs {
        cmd = cmd.mut_subcommand(name, |s| set_defaults(s, by_var));
    }
    cmd
}

/// The file's settings: key as written → (its variable, its values). A list gives several
/// values; anything else gives one, as its variable would hold it.
pub fn read(path: &Path) -> anyhow::Result<BTreeMap<String, (String, Vec<String>)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
    let mut out = BTreeMap::new();
    for (key, value) in table {
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Some(s.clone()),
            toml::Value::Integer(i) => Some(i.to_string()),
            toml::Value::Float(f) => Some(f.to_string()),
            toml::Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        };
        let values = match &value {
            toml::Value::Array(items) => items.iter().map(scalar).collect(),
            v => scalar(v).map(|s| vec![s]),
        };
        let Some(values) = values else {
            bail!(
                "config file {}: key '{key}' must be a string, number, boolean or a list of them",
                path.display()
            );
        };
        let var = format!("GLIMPSE_{}", key.to_ascii_uppercase().replace('-', "_"));
        out.insert(key, (var, values));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command as Sub;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    /// `glimpse ARGS…` read with the file `text` beneath it, and with only the variables in
    /// `env` set: every flag's variable is renamed to one only this test sets, so neither the
    /// environment the tests run in nor other tests can change what is read.
    fn parse(text: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Cli> {
        let (_dir, p) = file(text);
        let tag = format!("{:?}", std::thread::current().id())
            .replace(|c: char| !c.is_ascii_alphanumeric(), "");
        for (var, value) in env {
            std::env::set_var(format!("{var}_CFGTEST_{tag}"), value);
        }
        fn isolate(cmd: Command, env: &[(&str, &str)], tag: &str) -> Command {
            let subs: Vec<String> = cmd
                .get_subcommands()
                .map(|s| s.get_name().to_string())
                .collect();
            let mut cmd = cmd.mut_args(|a| {
                let renamed = env_name(&a)
                    .filter(|v| env.iter().any(|(e, _)| e == v))
                    .map(|v| format!("{v}_CFGTEST_{tag}"));
                match renamed {
                    Some(name) => a.env(name),
                    None => a.env(None::<&str>),
                }
            });
            for name in subs {
                cmd = cmd.mut_subcommand(name, |s| isolate(s, env, tag));
            }
            cmd
        }
        let cmd = isolate(with_file(Cli::command(), &p)?, env, &tag);
        let m = cmd.try_get_matches_from(std::iter::once("glimpse").chain(args.iter().copied()))?;
        Ok(<Cli as clap::FromArgMatches>::from_arg_matches(&m)?)
    }

    fn serve(cli: Cli) -> glimpse_server::ServerConfig {
        match cli.command {
            Sub::Serve(c) => *c,
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn keys_are_read_with_their_variables_and_values() {
        let (_dir, p) = file(
            "bind = \"0.0.0.0:9\"\nallow_private_urls = true\ncredits-per-call = 2\n\
             clip_models = [\"a\", \"b\"]\nrate_limit_per_second = 0.5\n",
        );
        let got: Vec<_> = read(&p).unwrap().into_iter().collect();
        let row = |k: &str, v: &str, vals: &[&str]| {
            let vals = vals.iter().map(|s| s.to_string()).collect();
            (k.to_string(), (v.to_string(), vals))
        };
        assert_eq!(
            got,
            vec![
                row(
                    "allow_private_urls",
                    "GLIMPSE_ALLOW_PRIVATE_URLS",
                    &["true"]
                ),
                row("bind", "GLIMPSE_BIND", &["0.0.0.0:9"]),
                row("clip_models", "GLIMPSE_CLIP_MODELS", &["a", "b"]),
                row("credits-per-call", "GLIMPSE_CREDITS_PER_CALL", &["2"]),
                row(
                    "rate_limit_per_second",
                    "GLIMPSE_RATE_LIMIT_PER_SECOND",
                    &["0.5"]
                ),
            ]
        );
    }

    #[test]
    fn bad_toml_names_the_file() {
        let (_dir, p) = file("bind = ");
        let err = format!("{:#}", read(&p).unwrap_err());
        assert!(err.contains("g.toml"), "{err}");
        let (_dir, p) = file("[serve]\nbind = \"x\"\n");
        let err = format!("{:#}", read(&p).unwrap_err());
        assert!(err.contains("'serve'"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        for key in ["bnid", "config", "glimpse_bind", "labels"] {
            let err = parse(&format!("{key} = \"x\"\n"), &["serve"], &[]).unwrap_err();
            let err = format!("{err:#}");
            assert!(err.contains(&format!("unknown key '{key}'")), "{err}");
            assert!(err.contains("g.toml"), "{err}");
        }
    }

    #[test]
    fn a_bad_value_names_the_key_and_the_flag() {
        for (text, key, flag) in [
            ("precision = \"int4\"\n", "precision", "--precision"),
            ("bind = \"nowhere\"\n", "bind", "--bind"),
            ("batch_size = 0\n", "batch_size", "--batch-size"),
            (
                "prompt_templates = [\"a {label}\", \"b\"]\n",
                "prompt_templates",
                "--prompt-templates",
            ),
        ] {
            // Even from a command that does not read it: the file is wrong either way.
            let err = format!("{:#}", parse(text, &["keys", "list"], &[]).unwrap_err());
            assert!(err.contains(&format!("key '{key}'")), "{err}");
            assert!(err.contains(flag), "{err}");
            assert!(err.contains("g.toml"), "{err}");
        }
    }

    #[test]
    fn the_file_fills_what_no_flag_or_variable_sets() {
        let text = "batch_size = 4\nprecision = \"bf16\"\nallow_private_urls = true\n\
                    prompt_templates = [\"a {label}\", \"b {label}\"]\nclip_models = \"x,y\"\n\
                    database_url = \"sqlite://file.db\"\nlog_format = \"json\"\n";
        let c = serve(parse(text, &["serve"], &[]).unwrap());
        assert_eq!(c.batching.batch_size, 4);
        assert_eq!(c.models.precision, glimpse_candle::Precision::Bf16);
        assert!(c.fetch.allow_private_urls);
        assert_eq!(c.models.prompt_templates, vec!["a {label}", "b {label}"]);
        assert_eq!(c.models.extra_clip_models, vec!["x", "y"]);
        assert_eq!(c.store.database_url, "sqlite://file.db");
        assert_eq!(
            c.logging.log_format,
            glimpse_server::config::LogFormat::Json
        );
        // What the file does not name keeps its built-in default.
        assert_eq!(c.batching.batch_window_ms, 10);
        // One key reaches every command that reads its variable.
        match parse(text, &["keys", "list"], &[]).unwrap().command {
            Sub::Keys(k) => assert_eq!(k.database_url, "sqlite://file.db"),
            other => panic!("{other:?}"),
        }
        match parse(text, &["classify", "clip", "x.jpg"], &[])
            .unwrap()
            .command
        {
            Sub::Classify(a) => assert_eq!(a.precision, glimpse_candle::Precision::Bf16),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_variable_beats_the_file_and_a_flag_beats_both() {
        let text = "batch_size = 4\nbatch_window_ms = 20\nidle_timeout_secs = 7\n";
        let env = [
            ("GLIMPSE_BATCH_SIZE", "5"),
            ("GLIMPSE_BATCH_WINDOW_MS", "30"),
        ];
        let c = serve(parse(text, &["serve", "--batch-window-ms", "40"], &env).unwrap());
        assert_eq!(c.batching.batch_size, 5, "variable over file");
        assert_eq!(
            c.batching.batch_window_ms, 40,
            "flag over variable and file"
        );
        assert_eq!(c.listen.idle_timeout_secs, 7, "file over built-in default");
    }

    #[test]
    fn reading_the_file_leaves_the_environment_alone() {
        // Other tests set their own renamed variables meanwhile (`parse`): leave those out.
        let glimpse_vars = || -> Vec<_> {
            std::env::vars_os()
                .filter(|(k, _)| {
                    let k = k.to_string_lossy();
                    k.starts_with("GLIMPSE_") && !k.contains("_CFGTEST_")
                })
                .collect()
        };
        let before = glimpse_vars();
        let text = "database_url = \"sqlite://untouched.db\"\nidempotency_max_per_key = 9\n";
        let c = serve(parse(text, &["serve"], &[]).unwrap());
        assert_eq!(c.store.idempotency_max_per_key, 9);
        assert!(std::env::var_os("GLIMPSE_IDEMPOTENCY_MAX_PER_KEY").is_none());
        assert_eq!(before, glimpse_vars());
    }

    #[test]
    fn the_path_is_the_last_flag_else_the_variable() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        let var = Some(OsString::from("v.toml"));
        assert_eq!(
            path_from(&args(&["glimpse", "serve"]), var.clone()),
            Some("v.toml".into())
        );
        assert_eq!(
            path_from(
                &args(&["glimpse", "--config", "a.toml", "serve", "--config=b.toml"]),
                var
            ),
            Some("b.toml".into())
        );
        assert_eq!(path_from(&args(&["glimpse", "serve"]), None), None);
        assert_eq!(
            path_from(
                &args(&["glimpse", "classify", "clip", "--", "--config"]),
                None
            ),
            None
        );
    }

    #[test]
    fn a_secret_from_the_file_stays_out_of_help() {
        let (_dir, p) = file("admin_token = \"file-secret-0123456789\"\nbatch_size = 3\n");
        let mut cmd = with_file(Cli::command(), &p).unwrap();
        let serve = cmd.find_subcommand_mut("serve").unwrap();
        let help = serve.render_long_help().to_string();
        assert!(!help.contains("file-secret"), "{help}");
        assert!(help.contains("[default: 3]"), "{help}");
    }
}
