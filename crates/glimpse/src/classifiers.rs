//! `glimpse classifiers …` (issue 24): saved classifiers against the configured store, like
//! `glimpse keys`. `create NAME --key-id ID --from-dir DIR` teaches one from a folder: each
//! sub-folder is a label (its name), its image files the label's examples, and an optional
//! `prompts.txt` (one prompt per line; `{label}` is replaced) its prompts. The prototypes are
//! computed here, with the same model code and `glimpse_core::prototypes` as the server, and
//! stored; a server serving the same model id uses them as they are. Local: no credits.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, ensure, Context};
use glimpse_core::backend::PixelBatch;
use glimpse_core::image::DecodeLimits;
use glimpse_core::labels::prompts_for;
use glimpse_core::prototypes::prototype;
use glimpse_core::Task;
use glimpse_server::hub::{model_id_for, resolve_model, HubOptions};
use glimpse_server::routes::classifiers::{
    valid_name, MAX_CLASSIFIERS_PER_KEY, MAX_EXAMPLES_PER_LABEL, MAX_LABELS,
};
use glimpse_store::{connect, ClassifierLabel, ClassifierSpec, Store};

use crate::cli::{ClassifiersArgs, ClassifiersCommand};
use crate::session::prepare;

pub fn run(args: ClassifiersArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let store = connect(&args.database_url).await.map_err(|e| {
            anyhow::anyhow!("cannot open the store (GLIMPSE_DATABASE_URL / --database-url): {e}")
        })?;
        match args.command {
            ClassifiersCommand::Create {
                name,
                key_id,
                from_dir,
                model,
                templates,
                model_cache,
            } => {
                ensure!(
                    valid_name(&name),
                    "the name must be 1 to 64 characters of a-z, 0-9, '-' and '_'; got '{name}'"
                );
                let labels = read_dir(&from_dir)?;
                let spec = teach(&name, &model, &templates, model_cache, labels)?;
                let made = store
                    .create_classifier(&key_id, &spec, MAX_CLASSIFIERS_PER_KEY)
                    .await?;
                println!(
                    "created {} for {} with model {}: {}",
                    made.spec.name,
                    made.key_id,
                    made.spec.model,
                    summary(&made.spec)
                );
            }
            ClassifiersCommand::List { key_id, json } => {
                let all = store.list_classifiers(&key_id).await?;
                if json {
                    let rows: Vec<_> = all.iter().map(|c| view(&c.spec, &c.created_at)).collect();
                    println!("{}", serde_json::Value::Array(rows));
                } else {
                    for c in all {
                        println!("{}\t{}\t{}", c.spec.name, c.spec.model, summary(&c.spec));
                    }
                }
            }
            ClassifiersCommand::Show { name, key_id } => {
                let c = find(store.as_ref(), &key_id, &name).await?;
                println!("{}", view(&c.spec, &c.created_at));
            }
            ClassifiersCommand::Delete { name, key_id } => {
                ensure!(
                    store.delete_classifier(&key_id, &name).await?,
                    "{key_id} has no classifier named '{name}'"
                );
                println!("deleted {name}");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn find(
    store: &dyn Store,
    key_id: &str,
    name: &str,
) -> anyhow::Result<glimpse_store::Classifier> {
    store
        .get_classifier(key_id, name)
        .await?
        .with_context(|| format!("{key_id} has no classifier named '{name}'"))
}

/// What `show` prints (the API's shape, without the embeddings).
fn view(spec: &ClassifierSpec, created_at: &str) -> serde_json::Value {
    serde_json::json!({
        "name": spec.name,
        "model": spec.model,
        "labels": spec.labels.iter().map(|l| serde_json::json!({
            "name": l.name, "prompts": l.prompts, "examples": l.examples
        })).collect::<Vec<_>>(),
        "createdAt": created_at,
    })
}

fn summary(spec: &ClassifierSpec) -> String {
    spec.labels
        .iter()
        .map(|l| format!("{} ({} examples)", l.name, l.examples))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A label read from its folder.
struct LabelDir {
    name: String,
    prompts: Vec<String>,
    examples: Vec<PathBuf>,
}

/// One label per sub-folder (sorted by name); its files but `prompts.txt` are its examples.
fn read_dir(dir: &Path) -> anyhow::Result<Vec<LabelDir>> {
    let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subs.sort();
    ensure!(
        !subs.is_empty(),
        "{} has no sub-folders: make one per label, holding its example images",
        dir.display()
    );
    ensure!(
        subs.len() <= MAX_LABELS,
        "{} sub-folders: at most {MAX_LABELS} labels",
        subs.len()
    );
    let mut labels = Vec::new();
    for sub in subs {
        let name = sub
            .file_name()
            .and_then(|n| n.to_str())
            .context("a sub-folder name is not UTF-8")?
            .to_string();
        let mut prompts = Vec::new();
        let mut examples: Vec<PathBuf> = Vec::new();
        for entry in std::fs::read_dir(&sub)? {
            let path = entry?.path();
            if !path.is_file() {
                continue;
            }
            if path.file_name().is_some_and(|n| n == "prompts.txt") {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                prompts = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect();
            } else {
                examples.push(path);
            }
        }
        examples.sort();
        ensure!(
            examples.len() <= MAX_EXAMPLES_PER_LABEL,
            "label '{name}' has {} examples: at most {MAX_EXAMPLES_PER_LABEL}",
            examples.len()
        );
        labels.push(LabelDir {
            name,
            prompts,
            examples,
        });
    }
    Ok(labels)
}

/// Load the CLIP model and compute every label's prototype.
fn teach(
    name: &str,
    model_spec: &str,
    templates: &str,
    model_cache: Option<PathBuf>,
    labels: Vec<LabelDir>,
) -> anyhow::Result<ClassifierSpec> {
    let dir = resolve_model(model_spec, &HubOptions::from_env(model_cache))?;
    let model = glimpse_server::load_served(
        &dir,
        model_id_for(model_spec),
        Task::ZeroShot,
        &glimpse_candle::LoadOptions::default(),
    )?;
    let templates: Vec<String> = templates.split('|').map(str::to_string).collect();
    let cfg = model.preprocess_config();
    let (h, w) = cfg.output_size();
    let limits = DecodeLimits::default();
    let mut out = Vec::with_capacity(labels.len());
    for l in labels {
        let mut examples = Vec::with_capacity(l.examples.len());
        for path in &l.examples {
            let px = prepare(path, cfg, &limits, glimpse_core::image::DecodeMode::Exact)
                .with_context(|| format!("{}", path.display()))?;
            let mut e = model.embed_images(&PixelBatch::single(px, h, w))?;
            examples.push(e.pop().context("the model answered no embedding")?);
        }
        let texts = if l.prompts.is_empty() {
            prompts_for(&l.name, &templates)
        } else {
            prompts_for(&l.name, &l.prompts)
        };
        let prompt_embs = model.embed_texts(&texts)?;
        let embedding = prototype(&prompt_embs, &examples)?;
        out.push(ClassifierLabel {
            name: l.name,
            prompts: l.prompts,
            examples: examples.len() as u32,
            embedding,
        });
    }
    if out.is_empty() {
        bail!("no labels");
    }
    Ok(ClassifierSpec {
        name: name.to_string(),
        model: model.id().to_string(),
        labels: out,
        min_confidence: None,
        fallback: None,
        multi_label: false,
    })
}
