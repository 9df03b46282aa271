//! SigLIP's tokenizers, padded to the fixed length the models were trained with.
//!
//! - A folder with `tokenizer.json` (SigLIP 2's Gemma tokenizer, multilingual checkpoints) is read
//!   by the `tokenizers` crate as it is, with its own normaliser and post-processor.
//! - Google's SigLIP v1 folders carry only a SentencePiece `spiece.model`, which `tokenizers`
//!   cannot read. It is parsed here (the protobuf's pieces, scores, types and normaliser spec)
//!   into a `tokenizers` [`Unigram`] plus SentencePiece's normalisation (the precompiled NFKC
//!   charsmap, dummy prefix, extra-whitespace removal, spaces as `▁`), wrapped in what
//!   transformers' `SiglipTokenizer` does around it: split on its special tokens (`</s>`,
//!   `<unk>`, stripping the whitespace beside them), lowercase (`do_lower_case`), remove ASCII
//!   punctuation, collapse whitespace, strip, encode `"<unk>" + text` and drop the pieces of
//!   `"<unk>"`, then append `</s>` unless the ids already end with it.
//!
//! Every row is truncated to the model's text length and padded to it with the pad token
//! (`tokenizer_config.json`'s `pad_token` and `padding_side`), as transformers' zero-shot pipeline
//! does for SigLIP (`padding="max_length", max_length=64, truncation=True`). Whether the padding is
//! masked follows `model_input_names`: Google's repositories list only `input_ids`, so the
//! model sees the pad tokens, as it did in training.

use std::collections::HashMap;
use std::path::Path;

use glimpse_core::CoreError;
use serde_json::Value;
use tokenizers::models::unigram::Unigram;
use tokenizers::{Model, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::config::model_err;
use crate::Error;

/// `▁`, SentencePiece's escaped space.
const SPACE: char = '\u{2581}';

/// Token rows of one batch, all of the model's text length.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch {
    pub ids: Vec<Vec<u32>>,
    /// Per token: false for padding.
    pub masks: Vec<Vec<bool>>,
}

#[derive(Clone)]
enum Inner {
    Json(Box<Tokenizer>),
    Spiece(Box<Spiece>),
}

/// A SigLIP tokenizer (see the module docs).
#[derive(Clone)]
pub struct SiglipTokenizer {
    inner: Inner,
    max_length: usize,
    pad_id: u32,
    pad_left: bool,
    attention_mask: bool,
}

impl std::fmt::Debug for SiglipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SiglipTokenizer")
            .field(
                "kind",
                &match self.inner {
                    Inner::Json(_) => "tokenizer.json",
                    Inner::Spiece(_) => "spiece.model",
                },
            )
            .field("max_length", &self.max_length)
            .field("pad_id", &self.pad_id)
            .field("pad_left", &self.pad_left)
            .field("attention_mask", &self.attention_mask)
            .finish()
    }
}

/// What `tokenizer_config.json` says (all optional).
struct TokenizerConfig {
    path: String,
    json: serde_json::Map<String, Value>,
}

impl TokenizerConfig {
    fn read(dir: &Path) -> Result<Self, Error> {
        let path = dir.join("tokenizer_config.json");
        let json = match std::fs::read_to_string(&path) {
            Err(_) => serde_json::Map::new(),
            Ok(text) => match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(m)) => m,
                Ok(_) => {
                    return Err(model_err(format!(
                        "{}: expected a JSON object",
                        path.display()
                    )))
                }
                Err(source) => {
                    return Err(Error::Json {
                        context: path.display().to_string(),
                        source,
                    })
                }
            },
        };
        Ok(TokenizerConfig {
            path: path.display().to_string(),
            json,
        })
    }

    /// A token setting: a string, or an added-token object with `content`.
    fn token(&self, key: &str) -> Option<String> {
        match self.json.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(String::from),
            _ => None,
        }
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool, Error> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(model_err(format!(
                "{}: {key} must be true or false, got {v}",
                self.path
            ))),
        }
    }

    fn pad_left(&self) -> Result<bool, Error> {
        match self.json.get("padding_side") {
            None | Some(Value::Null) => Ok(false),
            Some(Value::String(s)) if s == "right" => Ok(false),
            Some(Value::String(s)) if s == "left" => Ok(true),
            Some(v) => Err(model_err(format!(
                "{}: padding_side must be \"left\" or \"right\", got {v}",
                self.path
            ))),
        }
    }

    /// transformers passes `attention_mask` to the model when the tokenizer returns one: when
    /// `model_input_names` lists it, or (both SigLIP tokenizer classes' default) says nothing.
    fn attention_mask(&self) -> bool {
        match self.json.get("model_input_names").and_then(Value::as_array) {
            Some(names) => names.iter().any(|n| n.as_str() == Some("attention_mask")),
            None => true,
        }
    }

    /// `added_tokens_decoder` entries: (content, id, lstrip, rstrip).
    fn added_tokens(&self) -> Vec<(String, u32, bool, bool)> {
        let Some(Value::Object(m)) = self.json.get("added_tokens_decoder") else {
            return Vec::new();
        };
        m.iter()
            .filter_map(|(id, v)| {
                let id = id.parse().ok()?;
                let content = v.get("content")?.as_str()?.to_string();
                let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
                Some((content, id, flag("lstrip"), flag("rstrip")))
            })
            .collect()
    }
}

impl SiglipTokenizer {
    /// The folder's `tokenizer.json`, or else its `spiece.model`, with `tokenizer_config.json`;
    /// rows are `max_length` long.
    pub fn from_dir(dir: &Path, max_length: usize) -> Result<Self, Error> {
        let cfg = TokenizerConfig::read(dir)?;
        let json_path = dir.join("tokenizer.json");
        let spm_path = dir.join("spiece.model");
        let (inner, pad_id) = if json_path.is_file() {
            let refused = |source| Error::Tokenizer {
                context: json_path.display().to_string(),
                source,
            };
            let mut tok = Tokenizer::from_file(&json_path).map_err(refused)?;
            // Truncation counts the tokens the post-processor adds (the end token survives).
            tok.with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(refused)?;
            tok.with_padding(None);
            let pad = cfg.token("pad_token").unwrap_or_else(|| "<pad>".into());
            let pad_id = tok.token_to_id(&pad).ok_or_else(|| {
                model_err(format!(
                    "{}: pad token '{pad}' is not in the vocabulary",
                    json_path.display()
                ))
            })?;
            (Inner::Json(Box::new(tok)), pad_id)
        } else if spm_path.is_file() {
            let spiece = Spiece::from_file(&spm_path, &cfg)?;
            let pad = cfg.token("pad_token").unwrap_or_else(|| "</s>".into());
            let pad_id = spiece.id_of(&pad).ok_or_else(|| {
                model_err(format!(
                    "{}: pad token '{pad}' is not in the vocabulary",
                    spm_path.display()
                ))
            })?;
            (Inner::Spiece(Box::new(spiece)), pad_id)
        } else {
            return Err(model_err(format!(
                "model folder {} has neither tokenizer.json nor spiece.model (SigLIP needs one \
                 to embed label prompts)",
                dir.display()
            )));
        };
        Ok(SiglipTokenizer {
            inner,
            max_length,
            pad_id,
            pad_left: cfg.pad_left()?,
            attention_mask: cfg.attention_mask(),
        })
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Whether the model is given an attention mask over the padding.
    pub fn uses_attention_mask(&self) -> bool {
        self.attention_mask
    }

    /// Ids of one text, special tokens included, truncated, not padded.
    pub fn encode_unpadded(&self, text: &str) -> Result<Vec<u32>, CoreError> {
        match &self.inner {
            Inner::Json(t) => t
                .encode(text, true)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| CoreError::internal(format!("tokenizing {text:?}: {e}"))),
            Inner::Spiece(s) => s.encode(text, self.max_length),
        }
    }

    /// Ids of one text padded to the model's text length.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, CoreError> {
        Ok(self.pad(self.encode_unpadded(text)?).0)
    }

    fn pad(&self, mut ids: Vec<u32>) -> (Vec<u32>, Vec<bool>) {
        ids.truncate(self.max_length);
        let n = self.max_length - ids.len();
        let mut mask = vec![true; ids.len()];
        if self.pad_left {
            ids.splice(0..0, std::iter::repeat_n(self.pad_id, n));
            mask.splice(0..0, std::iter::repeat_n(false, n));
        } else {
            ids.extend(std::iter::repeat_n(self.pad_id, n));
            mask.extend(std::iter::repeat_n(false, n));
        }
        (ids, mask)
    }

    /// Several texts, each padded to the model's text length.
    pub fn encode_batch(&self, texts: &[String]) -> Result<TokenBatch, CoreError> {
        let mut batch = TokenBatch {
            ids: Vec::with_capacity(texts.len()),
            masks: Vec::with_capacity(texts.len()),
        };
        for t in texts {
            let (ids, mask) = self.pad(self.encode_unpadded(t)?);
            batch.ids.push(ids);
            batch.masks.push(mask);
        }
        Ok(batch)
    }
}

/// SentencePiece piece types (`ModelProto.SentencePiece.Type`).
const NORMAL: u64 = 1;
const UNKNOWN: u64 = 2;
const USER_DEFINED: u64 = 4;
const BYTE: u64 = 6;

/// A special (added) token of the tokenizer: matched in the raw text before anything else.
#[derive(Debug, Clone)]
struct Special {
    content: String,
    id: u32,
    lstrip: bool,
    rstrip: bool,
}

/// SigLIP v1's SentencePiece tokenizer as transformers' `SiglipTokenizer` runs it.
#[derive(Clone)]
struct Spiece {
    model: Unigram,
    charsmap: Option<tokenizers::normalizers::precompiled::Precompiled>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
    /// Every piece's id by its text (control pieces included, for the special tokens).
    ids: HashMap<String, u32>,
    specials: Vec<Special>,
    unk_token: String,
    eos_id: u32,
    /// The id of the piece `▁`, if the vocabulary has it.
    space_id: Option<u32>,
    lower: bool,
}

impl Spiece {
    fn from_file(path: &Path, cfg: &TokenizerConfig) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            context: path.display().to_string(),
            source,
        })?;
        let bad = |what: &str| model_err(format!("{}: {what}", path.display()));
        let proto = proto::ModelProto::parse(&bytes)
            .map_err(|e| bad(&format!("not a SentencePiece model ({e})")))?;
        if proto.pieces.is_empty() {
            return Err(bad("the SentencePiece model has no pieces"));
        }
        if proto.model_type != 1 {
            return Err(bad(&format!(
                "SentencePiece model type {} is not supported (SigLIP's is unigram, 1)",
                proto.model_type
            )));
        }
        let mut vocab = Vec::with_capacity(proto.pieces.len());
        let mut ids = HashMap::with_capacity(proto.pieces.len());
        let mut unk = None;
        let mut byte_fallback = proto.byte_fallback;
        for (i, p) in proto.pieces.iter().enumerate() {
            ids.entry(p.piece.clone()).or_insert(i as u32);
            // SentencePiece never matches control, unknown or unused pieces in text: give them a
            // text no input can hold (a lone NUL plus the id) so the lattice cannot use them.
            let text = match p.kind {
                NORMAL | USER_DEFINED | BYTE => p.piece.clone(),
                _ => format!("\u{0}{i}\u{0}"),
            };
            byte_fallback |= p.kind == BYTE;
            if p.kind == UNKNOWN {
                unk = Some(i);
            }
            vocab.push((text, f64::from(p.score)));
        }
        let unk_id = unk.ok_or_else(|| bad("the SentencePiece model has no unknown piece"))?;
        let model = Unigram::from(vocab, Some(unk_id), byte_fallback)
            .map_err(|e| bad(&format!("its vocabulary is refused: {e}")))?;
        let charsmap = match &proto.charsmap {
            Some(b) if !b.is_empty() => Some(
                tokenizers::normalizers::precompiled::Precompiled::from(b)
                    .map_err(|e| bad(&format!("its precompiled charsmap is refused: {e}")))?,
            ),
            _ => None,
        };
        let unk_token = cfg.token("unk_token").unwrap_or_else(|| "<unk>".into());
        let eos = cfg.token("eos_token").unwrap_or_else(|| "</s>".into());
        let eos_id = *ids
            .get(&eos)
            .ok_or_else(|| bad(&format!("the end token '{eos}' is not a piece")))?;
        // transformers' SiglipTokenizer registers eos, unk and pad (stripping whitespace on both
        // sides) and whatever added_tokens_decoder lists.
        let mut specials: Vec<Special> = Vec::new();
        let mut add = |content: String, id: u32, lstrip: bool, rstrip: bool| {
            if !content.is_empty() && !specials.iter().any(|s| s.content == content) {
                specials.push(Special {
                    content,
                    id,
                    lstrip,
                    rstrip,
                });
            }
        };
        for (content, id, l, r) in cfg.added_tokens() {
            add(content, id, l, r);
        }
        for key in ["eos_token", "unk_token", "pad_token"] {
            if let Some(t) = cfg.token(key) {
                if let Some(&id) = ids.get(&t) {
                    add(t, id, true, true);
                }
            }
        }
        if let Some(&id) = ids.get(&eos) {
            add(eos.clone(), id, true, true);
        }
        if let Some(&id) = ids.get(&unk_token) {
            add(unk_token.clone(), id, true, true);
        }
        let space_id = ids.get(&SPACE.to_string()).copied();
        Ok(Spiece {
            model,
            charsmap,
            add_dummy_prefix: proto.add_dummy_prefix,
            remove_extra_whitespaces: proto.remove_extra_whitespaces,
            escape_whitespaces: proto.escape_whitespaces,
            ids,
            specials,
            unk_token,
            eos_id,
            space_id,
            lower: cfg.bool("do_lower_case", true)?,
        })
    }

    fn id_of(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    /// SentencePiece's normaliser: the charsmap, then whitespace (leading and repeated spaces
    /// dropped, a `▁` prefix, spaces as `▁`, trailing `▁` dropped).
    fn normalize(&self, text: &str) -> String {
        let mapped;
        let s = match &self.charsmap {
            Some(c) => {
                mapped = c.normalize_string(text);
                mapped.as_str()
            }
            None => text,
        };
        let s = if self.remove_extra_whitespaces {
            s.trim_start_matches(' ')
        } else {
            s
        };
        let mut out = String::with_capacity(s.len() + 3);
        if s.is_empty() {
            return out;
        }
        let space = if self.escape_whitespaces { SPACE } else { ' ' };
        if self.add_dummy_prefix {
            out.push(space);
        }
        let mut prev_space = self.remove_extra_whitespaces;
        for c in s.chars() {
            if c == ' ' {
                if !(prev_space && self.remove_extra_whitespaces) {
                    out.push(space);
                }
                prev_space = true;
            } else {
                out.push(c);
                prev_space = false;
            }
        }
        if self.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.pop();
            }
        }
        out
    }

    /// `sp_model.encode(text)` as ids (consecutive unknown characters are one unknown piece).
    fn sp_encode(&self, text: &str) -> Result<Vec<u32>, CoreError> {
        let normalized = self.normalize(text);
        if normalized.is_empty() {
            return Ok(Vec::new());
        }
        let tokens = self
            .model
            .tokenize(&normalized)
            .map_err(|e| CoreError::internal(format!("tokenizing {text:?}: {e}")))?;
        Ok(tokens.into_iter().map(|t| t.id).collect())
    }

    /// `SiglipTokenizer._tokenize` of one piece of text between special tokens.
    fn tokenize_segment(&self, text: &str) -> Result<Vec<u32>, CoreError> {
        let canon = canonicalize(text, self.lower);
        let unk_len = self.sp_encode(&self.unk_token)?.len();
        let ids = self.sp_encode(&format!("{}{canon}", self.unk_token))?;
        Ok(if ids.len() >= unk_len {
            ids[unk_len..].to_vec()
        } else {
            ids
        })
    }

    /// `tokenizer(text, truncation=True, max_length=max_length)["input_ids"]`.
    fn encode(&self, text: &str, max_length: usize) -> Result<Vec<u32>, CoreError> {
        let text = format!("{SPACE}{}", text.replace(SPACE, " "));
        let mut ids: Vec<(u32, bool)> = Vec::new();
        for seg in self.split_specials(&text) {
            match seg {
                Segment::Special(id) => ids.push((id, true)),
                Segment::Text(t) if t.is_empty() => {}
                Segment::Text(t) => {
                    ids.extend(self.tokenize_segment(&t)?.into_iter().map(|id| (id, false)))
                }
            }
        }
        if ids.len() > 1 && Some(ids[0].0) == self.space_id && !ids[0].1 && ids[1].1 {
            ids.remove(0);
        }
        let mut ids: Vec<u32> = ids.into_iter().map(|(id, _)| id).collect();
        // Truncation keeps room for the end token, which is added unless already last.
        ids.truncate(max_length.saturating_sub(1));
        if ids.last() != Some(&self.eos_id) {
            ids.push(self.eos_id);
        }
        Ok(ids)
    }

    /// transformers' added-token split: leftmost, then longest match of a special token; the
    /// whitespace next to one that strips it is removed from its neighbours.
    fn split_specials(&self, text: &str) -> Vec<Segment> {
        let mut out: Vec<Segment> = Vec::new();
        let mut rest = text;
        let mut strip_next = false;
        loop {
            let found = (0..=rest.len())
                .filter(|&i| rest.is_char_boundary(i))
                .find_map(|i| {
                    self.specials
                        .iter()
                        .filter(|s| rest[i..].starts_with(&s.content))
                        .max_by_key(|s| s.content.len())
                        .map(|s| (i, s))
                });
            let Some((at, special)) = found else {
                let mut t = rest.to_string();
                if strip_next {
                    t = py_lstrip(&t).to_string();
                }
                out.push(Segment::Text(t));
                return out;
            };
            let mut before = rest[..at].to_string();
            if strip_next {
                before = py_lstrip(&before).to_string();
            }
            if special.lstrip {
                before = py_rstrip(&before).to_string();
            }
            out.push(Segment::Text(before));
            out.push(Segment::Special(special.id));
            strip_next = special.rstrip;
            rest = &rest[at + special.content.len()..];
        }
    }
}

enum Segment {
    Text(String),
    Special(u32),
}

/// Python's `str.isspace` (what `re`'s `\s` and `str.strip()` use): Unicode White_Space plus the
/// information separators U+001C..U+001F.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_lstrip(s: &str) -> &str {
    s.trim_start_matches(py_space)
}

fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(py_space)
}

/// `SiglipTokenizer.canonicalize_text`: lowercase (when asked), remove ASCII punctuation
/// (`string.punctuation`), collapse runs of whitespace to one space, strip.
pub fn canonicalize(text: &str, lower: bool) -> String {
    let lowered;
    let text = if lower {
        lowered = text.to_lowercase();
        lowered.as_str()
    } else {
        text
    };
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.chars().filter(|c| !c.is_ascii_punctuation()) {
        if py_space(c) {
            in_space = true;
        } else {
            if in_space && !out.is_empty() {
                out.push(' ');
            }
            in_space = false;
            out.push(c);
        }
    }
    out
}

/// The few fields of SentencePiece's `ModelProto` the tokenizer needs, read with a minimal
/// protobuf decoder (varints, length-delimited fields, fixed32; everything else skipped).
mod proto {
    pub struct Piece {
        pub piece: String,
        pub score: f32,
        pub kind: u64,
    }

    pub struct ModelProto {
        pub pieces: Vec<Piece>,
        /// TrainerSpec.model_type: 1 unigram, 2 BPE, 3 word, 4 char.
        pub model_type: u64,
        pub byte_fallback: bool,
        pub charsmap: Option<Vec<u8>>,
        pub add_dummy_prefix: bool,
        pub remove_extra_whitespaces: bool,
        pub escape_whitespaces: bool,
    }

    struct Reader<'a> {
        buf: &'a [u8],
        at: usize,
    }

    enum Field<'a> {
        Varint(u64),
        Bytes(&'a [u8]),
        Fixed32(u32),
        Fixed64,
    }

    impl<'a> Reader<'a> {
        fn new(buf: &'a [u8]) -> Self {
            Reader { buf, at: 0 }
        }

        fn varint(&mut self) -> Result<u64, String> {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let b = *self.buf.get(self.at).ok_or("truncated varint")?;
                self.at += 1;
                v |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    return Ok(v);
                }
            }
            Err("varint too long".into())
        }

        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            let end = self.at.checked_add(n).ok_or("length overflow")?;
            let s = self.buf.get(self.at..end).ok_or("truncated field")?;
            self.at = end;
            Ok(s)
        }

        fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, String> {
            if self.at >= self.buf.len() {
                return Ok(None);
            }
            let key = self.varint()?;
            let field = match key & 7 {
                0 => Field::Varint(self.varint()?),
                1 => {
                    self.take(8)?;
                    Field::Fixed64
                }
                2 => {
                    let n = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
                    Field::Bytes(self.take(n)?)
                }
                5 => {
                    let b = self.take(4)?;
                    Field::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                }
                w => return Err(format!("unsupported wire type {w}")),
            };
            Ok(Some((key >> 3, field)))
        }
    }

    impl ModelProto {
        pub fn parse(buf: &[u8]) -> Result<Self, String> {
            let mut m = ModelProto {
                pieces: Vec::new(),
                model_type: 1,
                byte_fallback: false,
                charsmap: None,
                add_dummy_prefix: true,
                remove_extra_whitespaces: true,
                escape_whitespaces: true,
            };
            let mut r = Reader::new(buf);
            while let Some((num, f)) = r.next()? {
                match (num, f) {
                    (1, Field::Bytes(b)) => m.pieces.push(parse_piece(b)?),
                    (2, Field::Bytes(b)) => {
                        let mut t = Reader::new(b);
                        while let Some((n, f)) = t.next()? {
                            match (n, f) {
                                (3, Field::Varint(v)) => m.model_type = v,
                                (35, Field::Varint(v)) => m.byte_fallback = v != 0,
                                _ => {}
                            }
                        }
                    }
                    (3, Field::Bytes(b)) => {
                        let mut t = Reader::new(b);
                        while let Some((n, f)) = t.next()? {
                            match (n, f) {
                                (2, Field::Bytes(c)) => m.charsmap = Some(c.to_vec()),
                                (3, Field::Varint(v)) => m.add_dummy_prefix = v != 0,
                                (4, Field::Varint(v)) => m.remove_extra_whitespaces = v != 0,
                                (5, Field::Varint(v)) => m.escape_whitespaces = v != 0,
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            Ok(m)
        }
    }

    fn parse_piece(buf: &[u8]) -> Result<Piece, String> {
        let mut p = Piece {
            piece: String::new(),
            score: 0.0,
            kind: super::NORMAL,
        };
        let mut r = Reader::new(buf);
        while let Some((n, f)) = r.next()? {
            match (n, f) {
                (1, Field::Bytes(b)) => {
                    p.piece = String::from_utf8(b.to_vec()).map_err(|_| "a piece is not UTF-8")?
                }
                (2, Field::Fixed32(v)) => p.score = f32::from_bits(v),
                (3, Field::Varint(v)) => p.kind = v,
                _ => {}
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalize_is_siglips() {
        assert_eq!(canonicalize("  Hello,   World!! ", true), "hello world");
        assert_eq!(canonicalize("a\u{1f}b\u{a0}c", false), "a b c");
        // Final sigma, as Python's str.lower gives it.
        assert_eq!(canonicalize("ΟΔΟΣ", true), "\u{3bf}\u{3b4}\u{3bf}\u{3c2}");
        assert_eq!(canonicalize("!!!", true), "");
    }
}
