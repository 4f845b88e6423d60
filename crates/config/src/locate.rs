//! Mapping a field path (`service[1].hosts[0]`) back to a place in the TOML text, so that
//! semantic errors found after parsing still name a line and column.

use toml_edit::{Document, Item};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    /// A table key.
    Key(&'static str),
    /// An array index.
    Index(usize),
}

impl PathSeg {
    /// Renders a path the way serde_path_to_error does: `a.b[2].c`.
    pub fn display(path: &[PathSeg]) -> String {
        let mut out = String::new();
        for seg in path {
            match seg {
                PathSeg::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                PathSeg::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before
        .get(line_start..)
        .map(|s| s.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

/// Byte offset where the item at `path` starts, or the deepest ancestor found.
pub fn locate(doc: &Document<&str>, path: &[PathSeg]) -> Option<usize> {
    let mut item: &Item = doc.as_item();
    let mut best = None;
    for seg in path {
        // An absent field (a required name not given) is located at its parent.
        let Some(next) = step(item, seg) else {
            return best;
        };
        if let Some(span) = next.span() {
            best = Some(span.start);
        } else if let (PathSeg::Key(k), Some(table)) = (seg, item.as_table_like()) {
            // Tables written as `[header]` carry their span on the key.
            if let Some((key, _)) = table.get_key_value(k) {
                best = key.span().map(|s| s.start).or(best);
            }
        }
        item = next;
    }
    best
}

fn step<'a>(item: &'a Item, seg: &PathSeg) -> Option<&'a Item> {
    match seg {
        PathSeg::Key(k) => item.get(*k),
        PathSeg::Index(i) => item.get(*i),
    }
}
