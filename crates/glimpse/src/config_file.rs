//! `--config FILE` (or `GLIMPSE_CONFIG`): a TOML file whose keys are the variables' names without the
//! `GLIMPSE_` prefix, in snake case (`bind = "0.0.0.0:8080"`, `database_url = "…"`). Each key sets its
//! variable unless the environment already has it, so flags beat variables beat the file.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context};

pub fn apply_from_args(args: impl Iterator<Item = OsString>) -> anyhow::Result<()> {
    let args: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
    let mut path = std::env::var("GLIMPSE_CONFIG").ok();
    for (i, a) in args.iter().enumerate() {
        if let Some(p) = a.strip_prefix("--config=") {
            path = Some(p.to_string());
        } else if a == "--config" {
            path = args.get(i + 1).cloned();
        }
    }
    let Some(path) = path else { return Ok(()) };
    for (var, value) in read(Path::new(&path))? {
        if std::env::var_os(&var).is_none() {
            std::env::set_var(var, value);
        }
    }
    Ok(())
}

/// `(VARIABLE, value)` pairs from the file.
pub fn read(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
    let mut out = Vec::new();
    for (key, value) in table {
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.clone()),
                    other => Ok(other.to_string()),
                })
                .collect::<anyhow::Result<Vec<_>>>()?
                .join(","),
            _ => bail!(
                "config file {}: key '{key}' must be a string, number, boolean or list",
                path.display()
            ),
        };
        out.push((
            format!("GLIMPSE_{}", key.to_ascii_uppercase().replace('-', "_")),
            value,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_glimpse_variables() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.toml");
        std::fs::write(&p, "bind = \"0.0.0.0:9\"\nallow_private_urls = true\ncredits-per-call = 2\nclip_models = [\"a\", \"b\"]\n").unwrap();
        let mut got = read(&p).unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("GLIMPSE_ALLOW_PRIVATE_URLS".to_string(), "true".to_string()),
                ("GLIMPSE_BIND".to_string(), "0.0.0.0:9".to_string()),
                ("GLIMPSE_CLIP_MODELS".to_string(), "a,b".to_string()),
                ("GLIMPSE_CREDITS_PER_CALL".to_string(), "2".to_string()),
            ]
        );
    }

    #[test]
    fn bad_toml_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, "bind = ").unwrap();
        let err = format!("{:#}", read(&p).unwrap_err());
        assert!(err.contains("bad.toml"), "{err}");
    }
}
