//! The models a server holds: one slot per served model (the model and its batching queue), in
//! the order they were configured. The first model of a task is that task's default; all of a
//! task's models form the allow-list a request's `clipModel`/`vitModel` is checked against.

use std::sync::Arc;

use crate::batcher::{model_batcher, BatchOptions, ModelBatcher, PassGate, PassReport};
use crate::model::{ServedModel, Task};
use crate::CoreError;

/// One served model and the queue every forward pass of it runs through.
pub struct Slot {
    pub model: Arc<ServedModel>,
    pub batcher: ModelBatcher,
}

pub struct Registry {
    slots: Vec<Arc<Slot>>,
    gate: Option<Arc<PassGate>>,
}

/// A request named a model this server does not serve for the task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {param} '{requested}'; allowed: {}", .allowed.join(", "))]
pub struct UnknownModel {
    pub param: &'static str,
    pub requested: String,
    pub allowed: Vec<String>,
}

impl Registry {
    /// Start one batcher per model. Model ids must be unique within a task; at least one model is
    /// needed.
    pub fn new(
        models: Vec<ServedModel>,
        templates: Vec<String>,
        options: BatchOptions,
        gate: Option<Arc<PassGate>>,
    ) -> Result<Self, CoreError> {
        if models.is_empty() {
            return Err(CoreError::model(
                "the server needs at least one CLIP or ViT model",
            ));
        }
        for (i, m) in models.iter().enumerate() {
            if models[..i]
                .iter()
                .any(|o| o.id() == m.id() && o.task() == m.task())
            {
                return Err(CoreError::model(format!(
                    "two models share the id '{}'; rename one folder",
                    m.id()
                )));
            }
        }
        let templates = Arc::new(templates);
        let slots = models
            .into_iter()
            .map(|m| {
                let model = Arc::new(m);
                let batcher = model_batcher(
                    Arc::clone(&model),
                    Arc::clone(&templates),
                    options,
                    gate.clone(),
                )
                .map_err(|e| CoreError::internal_caused("cannot start a batcher thread", e))?;
                Ok(Arc::new(Slot { model, batcher }))
            })
            .collect::<Result<_, CoreError>>()?;
        Ok(Registry { slots, gate })
    }

    /// The gate bounding the forward passes running at once over all models, for passes run
    /// outside a batcher (see [`PassGate::run`]).
    pub fn gate(&self) -> Option<Arc<PassGate>> {
        self.gate.clone()
    }

    pub fn slots(&self) -> &[Arc<Slot>] {
        &self.slots
    }

    /// The models serving `task`, default first.
    pub fn for_task(&self, task: Task) -> impl Iterator<Item = &Arc<Slot>> {
        self.slots.iter().filter(move |s| s.model.task() == task)
    }

    /// The ids serving `task`, default first (the allow-list).
    pub fn ids(&self, task: Task) -> Vec<String> {
        self.for_task(task)
            .map(|s| s.model.id().to_string())
            .collect()
    }

    /// The default model of `task`; `None` when the task is turned off on this server.
    pub fn default_for(&self, task: Task) -> Option<&Arc<Slot>> {
        self.for_task(task).next()
    }

    /// The model a request asked for (`requested`, trimmed; none or blank means the default).
    /// `Ok(None)`: the task has no model on this server.
    pub fn pick(
        &self,
        task: Task,
        requested: Option<&str>,
    ) -> Result<Option<&Arc<Slot>>, UnknownModel> {
        let Some(req) = requested.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(self.default_for(task));
        };
        self.for_task(task)
            .find(|s| s.model.id() == req)
            .map(Some)
            .ok_or_else(|| UnknownModel {
                param: task.model_param(),
                requested: req.to_string(),
                allowed: self.ids(task),
            })
    }

    /// Jobs waiting over all models (for `/metrics`).
    pub fn queue_depth(&self) -> usize {
        self.slots.iter().map(|s| s.batcher.queue_depth()).sum()
    }

    /// Call `hook(model, pass)` after every forward pass any model runs (for `/metrics`).
    pub fn on_batch(&self, hook: impl Fn(&ServedModel, &PassReport) + Send + Sync + 'static) {
        let hook = Arc::new(hook);
        for s in &self.slots {
            let (h, m) = (Arc::clone(&hook), Arc::clone(&s.model));
            s.batcher.on_batch(move |p| h(&m, p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{ImageClassifier, PixelBatch};
    use crate::preprocess::PreprocessConfig;

    struct Fake(PreprocessConfig, Vec<String>);

    impl ImageClassifier for Fake {
        fn preprocess_config(&self) -> &PreprocessConfig {
            &self.0
        }
        fn classify(&self, pixels: &PixelBatch) -> crate::Result<Vec<Vec<f32>>> {
            Ok(vec![vec![1.0]; pixels.batch])
        }
        fn id2label(&self) -> &[String] {
            &self.1
        }
    }

    fn fake(id: &str) -> ServedModel {
        let cfg = PreprocessConfig::plain(2);
        ServedModel::classifier(id, Arc::new(Fake(cfg, vec!["x".into()])))
    }

    #[test]
    fn the_first_model_of_a_task_is_its_default_and_the_rest_form_the_allow_list() {
        let r = Registry::new(
            vec![fake("a/b"), fake("c")],
            vec![],
            BatchOptions::default(),
            None,
        )
        .unwrap();
        let id = |s: Option<&Arc<Slot>>| s.map(|s| s.model.id().to_string());
        assert_eq!(
            id(r.pick(Task::Classify, None).unwrap()),
            Some("a/b".into())
        );
        assert_eq!(
            id(r.pick(Task::Classify, Some("  ")).unwrap()),
            Some("a/b".into())
        );
        assert_eq!(
            id(r.pick(Task::Classify, Some(" c ")).unwrap()),
            Some("c".into())
        );
        let e = r.pick(Task::Classify, Some("x")).err().unwrap();
        assert_eq!(e.to_string(), "unknown vitModel 'x'; allowed: a/b, c");
        // No zero-shot model: the task is off.
        assert!(r.pick(Task::ZeroShot, None).unwrap().is_none());
        assert!(r.pick(Task::ZeroShot, Some("a/b")).is_err());
    }

    #[test]
    fn ids_must_be_unique_and_one_model_is_needed() {
        let dup = Registry::new(
            vec![fake("m"), fake("m")],
            vec![],
            BatchOptions::default(),
            None,
        );
        assert!(dup.err().unwrap().to_string().contains("'m'"));
        assert!(Registry::new(vec![], vec![], BatchOptions::default(), None).is_err());
    }
}
