//! The results file of bulk mode: what an earlier run left (resume), and whole-line appends.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use anyhow::Context;
use glimpse_core::response::ClassificationResponse;
use serde::Serialize;

use super::{io_err, BulkError};

/// What an earlier run left in the output file, and the file opened for appending.
pub struct Results {
    pub done: HashSet<String>,
    pub failed: HashSet<String>,
    /// Bytes of a torn last line that were cut off.
    pub torn_bytes: u64,
    file: File,
}

impl Results {
    pub fn open(path: &Path) -> Result<Results, BulkError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path);
        let file = file.map_err(io_err("cannot open", path))?;
        let (mut done, mut failed) = (HashSet::new(), HashSet::new());
        let (mut keep, mut torn_bytes, mut line_no) = (0u64, 0u64, 0usize);
        let mut reader = BufReader::new(&file);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(io_err("cannot read", path))?;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                // Every line is written whole with its newline, so only the last can lack one.
                torn_bytes = n as u64;
                break;
            }
            line_no += 1;
            let bad = |why: String| BulkError::NotResults {
                path: path.to_path_buf(),
                line: line_no,
                why,
            };
            let v: serde_json::Value =
                serde_json::from_slice(&line).map_err(|e| bad(e.to_string()))?;
            let name = v
                .get("file")
                .and_then(|f| f.as_str())
                .ok_or_else(|| bad("no \"file\" field".into()))?;
            if v.get("error").is_some() {
                failed.insert(name.to_string());
            }
            done.insert(name.to_string());
            keep += n as u64;
        }
        drop(reader);
        if torn_bytes > 0 {
            file.set_len(keep)
                .map_err(io_err("cannot cut the torn last line of", path))?;
        }
        drop(file);
        // Append mode from here on: every write lands at the end.
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io_err("cannot open", path))?;
        Ok(Results {
            done,
            failed,
            torn_bytes,
            file,
        })
    }

    /// One whole line in one write, then flush: a kill loses at most this line.
    pub(super) fn write_line<T: Serialize>(&mut self, line: &T) -> anyhow::Result<()> {
        let mut buf = serde_json::to_vec(line)?;
        buf.push(b'\n');
        self.file
            .write_all(&buf)
            .context("cannot write the results file")?;
        self.file.flush().context("cannot write the results file")?;
        Ok(())
    }
}

#[derive(Serialize)]
pub(crate) struct AnswerLine<'a> {
    pub file: &'a str,
    #[serde(flatten)]
    pub answer: &'a ClassificationResponse,
}

#[derive(Serialize)]
pub(super) struct ErrorLine<'a> {
    pub file: &'a str,
    pub error: ErrorBody<'a>,
}

/// Same shape as the API's error body.
#[derive(Serialize)]
pub(super) struct ErrorBody<'a> {
    pub message: &'a str,
    pub code: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_file_keeps_whole_lines_and_cuts_a_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.jsonl");
        let good = "{\"file\":\"a.jpg\",\"result\":\"car\"}\n{\"file\":\"b.jpg\",\"error\":{\"message\":\"m\",\"code\":\"VALIDATION_ERROR\"}}\n";
        std::fs::write(&p, format!("{good}{{\"file\":\"c.jp")).unwrap();
        let r = Results::open(&p).unwrap();
        assert_eq!(r.done.len(), 2);
        assert!(r.failed.contains("b.jpg") && !r.failed.contains("a.jpg"));
        assert_eq!(r.torn_bytes, 13);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), good);

        std::fs::write(&p, "not json\n").unwrap();
        let e = Results::open(&p).err().unwrap().to_string();
        assert!(e.contains("line 1"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "not json\n",
            "a foreign file is left alone"
        );
    }
}
