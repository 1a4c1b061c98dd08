//! CSV plumbing shared by the tabular parsers: columns found by name in a
//! header, checked access to one row's fields, and a read loop that turns a
//! reader error into a reject instead of ending the file.
//!
//! Exports are written by tools and edited by people, so columns are matched
//! by name (trimmed, case-insensitive) in any order, a known column named
//! twice is a file error rather than a silent choice, and every column the
//! parser does not know is kept, by header name, for the point's `attrs`.

use csv::{ByteRecord, Position, Reader};

use super::{FormatError, ParseOutput, Reject, RejectReason};
use crate::record::Point;

/// Where each known column is in a header.
#[derive(Debug)]
pub(crate) struct Columns {
    /// Index of each known column, if present, in the caller's order.
    known: Vec<Option<usize>>,
    /// The caller's names for the known columns, for `MissingField`.
    labels: Vec<&'static str>,
    /// Unknown columns: index and header name.
    extra: Vec<(usize, String)>,
    /// Number of header fields; every row must have as many.
    count: usize,
}

impl Columns {
    /// Find `names` in `header`. `labels[i]` names `names[i]` in errors and
    /// rejects (it is the name itself for fixed formats, the mapping role
    /// for generic CSV); `required` lists indexes into `names`.
    pub(crate) fn from_header(
        header: &ByteRecord,
        names: &[&str],
        labels: &[&'static str],
        required: &[usize],
    ) -> Result<Self, FormatError> {
        let mut known = vec![None; names.len()];
        let mut extra = Vec::new();
        for (index, raw) in header.iter().enumerate() {
            let name = std::str::from_utf8(raw).map_err(|_| FormatError::NotUtf8)?;
            let at = names
                .iter()
                .position(|k| k.trim().eq_ignore_ascii_case(name.trim()));
            match at.and_then(|k| known.get_mut(k).map(|slot| (k, slot))) {
                Some((k, slot)) => {
                    if slot.replace(index).is_some() {
                        return Err(FormatError::DuplicateColumn(label(labels, k)));
                    }
                }
                None => extra.push((index, name.to_owned())),
            }
        }
        if let Some(&missing) = required
            .iter()
            .find(|&&k| known.get(k).copied().flatten().is_none())
        {
            return Err(FormatError::MissingColumn(label(labels, missing)));
        }
        Ok(Self {
            known,
            labels: labels.to_vec(),
            extra,
            count: header.len(),
        })
    }

    /// Whether known column `k` is in the header.
    pub(crate) fn has(&self, k: usize) -> bool {
        self.known.get(k).copied().flatten().is_some()
    }

    /// Checked access to `record`, a row read under this header. A row with
    /// a different field count is `Malformed`.
    pub(crate) fn row<'a>(&'a self, record: &'a ByteRecord) -> Result<Row<'a>, RejectReason> {
        if record.len() == self.count {
            Ok(Row {
                record,
                columns: self,
            })
        } else {
            Err(RejectReason::Malformed)
        }
    }
}

fn label(labels: &[&'static str], k: usize) -> &'static str {
    labels.get(k).copied().unwrap_or("?")
}

/// Field access for one row.
pub(crate) struct Row<'a> {
    record: &'a ByteRecord,
    columns: &'a Columns,
}

impl<'a> Row<'a> {
    fn at(&self, index: usize) -> Result<&'a str, RejectReason> {
        let raw = self.record.get(index).ok_or(RejectReason::Malformed)?;
        std::str::from_utf8(raw).map_err(|_| RejectReason::NotUtf8)
    }

    /// Known column `k` as written; `None` if the file has no such column.
    pub(crate) fn raw(&self, k: usize) -> Result<Option<&'a str>, RejectReason> {
        self.columns
            .known
            .get(k)
            .copied()
            .flatten()
            .map(|i| self.at(i))
            .transpose()
    }

    /// Known column `k`, trimmed; `None` if absent or blank.
    pub(crate) fn text(&self, k: usize) -> Result<Option<&'a str>, RejectReason> {
        Ok(self.raw(k)?.map(str::trim).filter(|s| !s.is_empty()))
    }

    /// Known column `k`, trimmed; absent or blank is `MissingField`.
    pub(crate) fn required(&self, k: usize) -> Result<&'a str, RejectReason> {
        self.text(k)?
            .ok_or(RejectReason::MissingField(label(&self.columns.labels, k)))
    }

    /// Every unknown column as `(header name, text)`, in file order.
    pub(crate) fn extras(&self) -> Result<Vec<(String, String)>, RejectReason> {
        self.columns
            .extra
            .iter()
            .map(|(index, name)| Ok((name.clone(), self.at(*index)?.to_owned())))
            .collect()
    }
}

/// What the reader was built with that decides where a record ends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dialect {
    /// Field delimiter (`,` unless a mapping says otherwise).
    pub(crate) delimiter: u8,
    /// Comment byte, for formats that have comment lines.
    pub(crate) comment: Option<u8>,
}

impl Dialect {
    /// Comma-separated, no comment lines.
    pub(crate) const CSV: Self = Self {
        delimiter: b',',
        comment: None,
    };
}

/// Read every remaining record of `reader` (reading `bytes` in `dialect`),
/// calling `each(record, line)` with the record's 1-based start line. A
/// reader error is recorded as a `Malformed` reject and reading goes on,
/// unless the reader is stuck at the same byte (then it stops: nothing
/// further could be read anyway).
///
/// A record the end of the input cut off (no newline after it, or the
/// input ends inside its quoted field) is never handed to `each`: it is a
/// [`RejectReason::Truncated`] reject, since its last field may be cut
/// short (`…,192` of `…,1920`) and still read as a value.
pub(crate) fn for_each_record(
    reader: &mut Reader<&[u8]>,
    bytes: &[u8],
    dialect: Dialect,
    out: &mut ParseOutput,
    mut each: impl FnMut(&ByteRecord, u64, &mut ParseOutput) -> Result<(), FormatError>,
) -> Result<(), FormatError> {
    let mut record = ByteRecord::new();
    let mut last_error_at = None;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {
                let (start, line) = record_start(bytes, record.position(), dialect.comment);
                if cut_off(bytes, start, reader.position(), dialect) {
                    out.rejects.push(Reject {
                        line,
                        reason: RejectReason::Truncated,
                    });
                } else {
                    each(&record, line, out)?;
                }
            }
            Err(e) => {
                // With `flexible` set, reading from a slice cannot fail
                // today; if it ever does, count it and move on.
                let line = record_line(bytes, e.position(), dialect.comment);
                out.rejects.push(Reject {
                    line,
                    reason: RejectReason::Malformed,
                });
                let at = reader.position().byte();
                if last_error_at == Some(at) {
                    return Ok(());
                }
                last_error_at = Some(at);
            }
        }
    }
}

/// After the header was read: a header the end of the input cut off is a
/// file error, since a cut column name (`OPCQual`) would still be read as
/// a column.
pub(crate) fn check_header(
    reader: &Reader<&[u8]>,
    header: &ByteRecord,
    bytes: &[u8],
    dialect: Dialect,
) -> Result<(), FormatError> {
    let (start, line) = record_start(bytes, header.position(), dialect.comment);
    if cut_off(bytes, start, reader.position(), dialect) {
        return Err(FormatError::Truncated { line });
    }
    Ok(())
}

/// Whether the record from byte `start` that left the reader at `end` was
/// ended by the end of the input rather than by a newline: the input does
/// not end with one, or ends inside a quoted field (a cut right after a
/// line break within quotes). A record followed by more input was ended by
/// its terminator; blank trailing bytes and a comment are no record.
fn cut_off(bytes: &[u8], start: usize, end: &Position, dialect: Dialect) -> bool {
    let Ok(end) = usize::try_from(end.byte()) else {
        return false;
    };
    if end < bytes.len() {
        return false;
    }
    let record = bytes.get(start..).unwrap_or_default();
    let record = record.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(record);
    if record.trim_ascii().is_empty() || record.first() == dialect.comment.as_ref() {
        return false;
    }
    // The quoting rules of the csv reader: a quote opens a quoted field only
    // at the start of a field, and `""` inside one is a literal quote.
    let (mut quoted, mut field_start) = (false, true);
    let mut bytes_in = record.iter().peekable();
    while let Some(&b) = bytes_in.next() {
        if quoted {
            if b == b'"' && bytes_in.next_if_eq(&&b'"').is_none() {
                quoted = false;
            }
        } else {
            quoted = b == b'"' && field_start;
            field_start = b == dialect.delimiter || b == b'\n' || b == b'\r';
        }
    }
    quoted || record.last() != Some(&b'\n')
}

/// The 1-based line a record really starts on.
///
/// The csv reader reports a record's position as where it *started
/// looking* for it, so a record after blank or comment lines is reported on
/// the first of those. Step over them from that position, counting lines.
pub(crate) fn record_line(bytes: &[u8], position: Option<&Position>, comment: Option<u8>) -> u64 {
    record_start(bytes, position, comment).1
}

/// Where a record really starts: byte offset and 1-based line (see
/// [`record_line`]); `(0, 0)` without a position.
fn record_start(bytes: &[u8], position: Option<&Position>, comment: Option<u8>) -> (usize, u64) {
    let Some(position) = position else {
        return (0, 0);
    };
    let mut at = usize::try_from(position.byte()).unwrap_or(usize::MAX);
    let mut line = position.line();
    loop {
        let rest = bytes.get(at..).unwrap_or_default();
        let skipped = match rest {
            [b'\n', ..] | [b'\r', b'\n', ..] => true,
            [first, ..] => Some(*first) == comment,
            [] => false,
        };
        let next = rest.iter().position(|&b| b == b'\n');
        match next {
            Some(i) if skipped => {
                at += i + 1;
                line += 1;
            }
            _ => return (at, line),
        }
    }
}

/// Push `point` or its reject for the record at `line`.
pub(crate) fn push(out: &mut ParseOutput, line: u64, row: Result<Point, RejectReason>) {
    match row {
        Ok(point) => out.points.push(point),
        Err(reason) => out.rejects.push(Reject { line, reason }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &[&str]) -> ByteRecord {
        ByteRecord::from(fields.to_vec())
    }

    #[test]
    fn columns_by_name_any_order_extras_kept() {
        let header = record(&[" b ", "X", "A"]);
        let cols = Columns::from_header(&header, &["a", "b", "c"], &["a", "b", "c"], &[0, 1])
            .expect("header");
        assert!(cols.has(0) && cols.has(1) && !cols.has(2));
        let rec = record(&["2", "x", " 1 "]);
        let row = cols.row(&rec).expect("row");
        assert_eq!(row.raw(0), Ok(Some(" 1 ")));
        assert_eq!(row.text(0), Ok(Some("1")));
        assert_eq!(row.text(2), Ok(None));
        assert_eq!(row.required(2), Err(RejectReason::MissingField("c")));
        assert_eq!(row.extras(), Ok(vec![("X".into(), "x".into())]));
        assert!(cols.row(&record(&["1"])).is_err());
    }

    #[test]
    fn lines_skip_blank_and_comment_lines() {
        let bytes = b"a,b\n*c1\nx,1\n\r\ny,2\n*c2\n*c3\n\nz,3\n\"q\nq\",4\nw,5\n";
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .comment(Some(b'*'))
            .from_reader(&bytes[..]);
        let mut out = ParseOutput::default();
        let mut seen = Vec::new();
        for_each_record(
            &mut reader,
            bytes,
            Dialect {
                delimiter: b',',
                comment: Some(b'*'),
            },
            &mut out,
            |record, line, _| {
                seen.push((record.get(0).map(<[u8]>::to_vec), line));
                Ok(())
            },
        )
        .expect("reads");
        let firsts: Vec<_> = seen
            .iter()
            .map(|(f, l)| (f.clone().unwrap_or_default(), *l))
            .collect();
        assert_eq!(
            firsts,
            vec![
                (b"a".to_vec(), 1),
                (b"x".to_vec(), 3),
                (b"y".to_vec(), 5),
                (b"z".to_vec(), 9),
                (b"q\nq".to_vec(), 10),
                (b"w".to_vec(), 12),
            ]
        );
        assert_eq!(record_line(bytes, None, None), 0);
    }

    /// Lines handed to `each`, and the rejects, for `bytes` read with
    /// `comment` and no header.
    fn read_all(bytes: &[u8], comment: Option<u8>) -> (Vec<u64>, Vec<Reject>) {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .comment(comment)
            .from_reader(bytes);
        let mut out = ParseOutput::default();
        let mut seen = Vec::new();
        let dialect = Dialect {
            delimiter: b',',
            comment,
        };
        for_each_record(&mut reader, bytes, dialect, &mut out, |_, line, _| {
            seen.push(line);
            Ok(())
        })
        .expect("reads");
        (seen, out.rejects)
    }

    #[test]
    fn a_record_the_end_of_input_cut_off_is_never_handed_over() {
        let cut = |line| {
            vec![Reject {
                line,
                reason: RejectReason::Truncated,
            }]
        };
        for (bytes, seen, rejects) in [
            // The last line has no newline (or only a CR).
            (&b"a,b\nx,1\ny,2"[..], vec![1, 2], cut(3)),
            (b"a,b\nx,1\ny,2\r", vec![1, 2], cut(3)),
            (b"a,b", vec![], cut(1)),
            // Cut right after a line break inside a quoted field.
            (b"a,b\nx,\"q\n", vec![1], cut(2)),
            (b"a,b\nx,\"q\"\"\n", vec![1], cut(2)),
            (b"a,\"b\n\nc\n", vec![], cut(1)),
            // Complete.
            (b"a,b\nx,1\ny,2\n", vec![1, 2, 3], vec![]),
            (b"a,b\r\nx,\"q\"\r\n", vec![1, 2], vec![]),
            (b"a,b\nx,\"q\nr\"\n", vec![1, 2], vec![]),
            (b"a,b\nx,\"q\"\"\"\n", vec![1, 2], vec![]),
            (b"a,b\nx,ab\"c\n", vec![1, 2], vec![]),
            (b"", vec![], vec![]),
        ] {
            let text = String::from_utf8_lossy(bytes);
            assert_eq!(read_all(bytes, None), (seen, rejects), "{text:?}");
        }
        // Blanks or a comment after the last newline are no record.
        let (seen, rejects) = read_all(b"a,b\nx,1\n*cut comm", Some(b'*'));
        assert!(rejects.is_empty() && seen.starts_with(&[1, 2]), "{seen:?}");
        let (seen, rejects) = read_all(b"a,b\nx,1\n \t", None);
        assert!(rejects.is_empty() && seen.starts_with(&[1, 2]), "{seen:?}");
    }

    #[test]
    fn a_header_the_end_of_input_cut_off_is_a_file_error() {
        for (bytes, want) in [
            (
                &b"DateTime,TagName,OPCQual"[..],
                Err(FormatError::Truncated { line: 1 }),
            ),
            (
                b"\n\nDateTime,\"Tag\nName",
                Err(FormatError::Truncated { line: 3 }),
            ),
            (b"DateTime,TagName\n", Ok(())),
            (b"DateTime,TagName\nx,y", Ok(())),
        ] {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(true)
                .flexible(true)
                .from_reader(bytes);
            let header = reader.byte_headers().expect("header").clone();
            let text = String::from_utf8_lossy(bytes);
            assert_eq!(
                check_header(&reader, &header, bytes, Dialect::CSV),
                want,
                "{text:?}"
            );
        }
    }

    #[test]
    fn header_errors() {
        let labels = ["a", "b"];
        assert_eq!(
            Columns::from_header(&record(&["a"]), &["a", "b"], &labels, &[0, 1]).map(|_| ()),
            Err(FormatError::MissingColumn("b"))
        );
        assert_eq!(
            Columns::from_header(&record(&["a", "A"]), &["a", "b"], &labels, &[0]).map(|_| ()),
            Err(FormatError::DuplicateColumn("a"))
        );
    }
}
