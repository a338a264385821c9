//! The row images of a rows event, decoded by Ferry column by column.
//!
//! `mysql_common` decodes each value; Ferry walks the images itself so
//! that it can check each column's metadata before handing it over (the
//! decoder indexes it without checking), take a known column's
//! signedness from `information_schema` (the event's flags only for a
//! column it does not know), and decode what the decoder gets wrong: a
//! negative `TIME(1)`/`TIME(2)` with a fraction (it subtracts from an
//! unsigned byte).
//!
//! An image is a null bitmap over the columns present (FULL: all), then
//! each present, non-null column's value in the table map's order; an
//! update has a before and an after image per row.

use std::io;

use mysql_async::binlog::events::{OptionalMetaExtractor, RowsEventData, TableMapEvent};
use mysql_async::binlog::value::BinlogValue;
use mysql_async::consts::ColumnType;
use mysql_async::Value;
use mysql_common::binlog::misc::time_from_packed;
use mysql_common::io::ParseBuf;
use serde_json::Value as Json;

use crate::change::Row;
use crate::mariadb::server::TableInfo;
use crate::mariadb::values::{Kind, Side};

/// A row's before and after images, as the event has them.
pub type Images = (Option<Row>, Option<Row>);

/// Each row of `rows` (a rows event of the table `map` describes) as
/// JSON, with `info`'s kinds.
pub fn decode(
    rows: &RowsEventData<'_>,
    map: &TableMapEvent<'_>,
    info: &TableInfo,
) -> Result<Vec<Images>, String> {
    let columns = Columns::of(map, info)?;
    let count = usize::try_from(rows.num_columns()).map_err(|e| e.to_string())?;
    if count != columns.0.len() {
        return Err(format!(
            "the rows event has {count} columns, its table map {}",
            columns.0.len()
        ));
    }
    let before: Option<Vec<bool>> = rows
        .columns_before_image()
        .map(|b| (0..count).map(|i| b.get(i).is_some_and(|x| *x)).collect());
    let after: Option<Vec<bool>> = rows
        .columns_after_image()
        .map(|b| (0..count).map(|i| b.get(i).is_some_and(|x| *x)).collect());
    let mut buf = ParseBuf(rows.rows_data());
    let mut out = Vec::new();
    while !buf.is_empty() {
        let b = match &before {
            Some(p) => Some(columns.image(&mut buf, p)?),
            None => None,
        };
        let a = match &after {
            Some(p) => Some(columns.image(&mut buf, p)?),
            None => None,
        };
        if b.is_none() && a.is_none() {
            return Err("a rows event without images".to_owned());
        }
        out.push((b, a));
    }
    Ok(out)
}

/// What decoding needs of each column, in table map order.
struct Columns(Vec<Column>);

struct Column {
    name: String,
    kind: Kind,
    column_type: ColumnType,
    meta: Vec<u8>,
    unsigned: bool,
}

impl Columns {
    fn of(map: &TableMapEvent<'_>, info: &TableInfo) -> Result<Self, String> {
        let count = usize::try_from(map.columns_count()).map_err(|e| e.to_string())?;
        let extra = OptionalMetaExtractor::new(map.iter_optional_meta())
            .map_err(|e| format!("table map metadata: {e}"))?;
        let mut names = extra.iter_column_name();
        let mut signedness = extra.iter_signedness();
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            let column_type = map
                .get_column_type(i)
                .map_err(|e| format!("column {i}: {e}"))?
                .ok_or_else(|| format!("column {i}: no type"))?;
            let meta = map.get_column_metadata(i).unwrap_or_default().to_vec();
            // The event's own signedness flags, one per numeric column.
            let event_unsigned = column_type
                .is_numeric_type()
                .then(|| signedness.next())
                .flatten()
                .unwrap_or(false);
            // Column names come with binlog_row_metadata=FULL; without,
            // the column's place in information_schema's order.
            let name = match names.next() {
                Some(Ok(n)) => n.name().into_owned(),
                Some(Err(e)) => return Err(format!("column {i}'s name: {e}")),
                None => info
                    .columns
                    .get(i)
                    .map(|(n, _)| n.clone())
                    .unwrap_or_else(|| format!("@{i}")),
            };
            let kind = match info.kind(&name) {
                Some(kind) => kind.clone(),
                None => fallback_kind(column_type, event_unsigned),
            };
            let unsigned = match kind {
                Kind::Int { unsigned, .. } => unsigned,
                _ => event_unsigned,
            };
            out.push(Column {
                name,
                kind,
                column_type,
                meta,
                unsigned,
            });
        }
        Ok(Self(out))
    }

    /// One image: the columns `present` says it has.
    fn image<'a>(&'a self, buf: &mut ParseBuf<'a>, present: &[bool]) -> Result<Row, String> {
        let count = present.iter().filter(|p| **p).count();
        let nulls = buf
            .checked_eat(count.div_ceil(8))
            .ok_or("a row image shorter than its null bitmap")?;
        let mut row = Row::new();
        let columns = self.0.iter().zip(present).filter(|(_, p)| **p);
        for (index, (column, _)) in columns.enumerate() {
            let null = nulls
                .get(index / 8)
                .is_some_and(|byte| byte & (1 << (index % 8)) != 0);
            let value = if null {
                Json::Null
            } else {
                let value = column
                    .read(buf)
                    .map_err(|e| format!("column {}: {e}", column.name))?;
                column.kind.to_json(&value, Side::Binlog)
            };
            row.insert(column.name.clone(), value);
        }
        Ok(row)
    }
}

impl Column {
    fn read<'a>(&'a self, buf: &mut ParseBuf<'a>) -> io::Result<Value> {
        use ColumnType::*;
        let needs = match self.column_type {
            MYSQL_TYPE_STRING
            | MYSQL_TYPE_VARCHAR
            | MYSQL_TYPE_VAR_STRING
            | MYSQL_TYPE_BIT
            | MYSQL_TYPE_NEWDECIMAL
            | MYSQL_TYPE_ENUM
            | MYSQL_TYPE_SET => 2,
            MYSQL_TYPE_TIMESTAMP2
            | MYSQL_TYPE_DATETIME2
            | MYSQL_TYPE_TIME2
            | MYSQL_TYPE_BLOB
            | MYSQL_TYPE_TINY_BLOB
            | MYSQL_TYPE_MEDIUM_BLOB
            | MYSQL_TYPE_LONG_BLOB
            | MYSQL_TYPE_GEOMETRY
            | MYSQL_TYPE_TYPED_ARRAY
            | MYSQL_TYPE_VECTOR => 1,
            _ => 0,
        };
        if self.meta.len() < needs {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{:?} metadata of {} bytes",
                    self.column_type,
                    self.meta.len()
                ),
            ));
        }
        if self.column_type == MYSQL_TYPE_TIME2 && matches!(self.meta[0], 1 | 2) {
            return time2_hundredths(buf);
        }
        let ctx = (self.column_type, self.meta.as_slice(), self.unsigned, false);
        match buf.parse::<BinlogValue<'_>>(ctx)? {
            BinlogValue::Value(v) => Ok(v),
            BinlogValue::Jsonb(j) => {
                let json = Json::try_from(j)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                Ok(Value::Bytes(json.to_string().into_bytes()))
            }
            BinlogValue::JsonDiff(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "partial JSON updates are not supported",
            )),
        }
    }
}

/// `TIME(1)` or `TIME(2)`: three bytes of whole seconds (big-endian,
/// offset by 0x800000) and one of hundredths, which for a negative value
/// counts down from 0x100 (MariaDB's `my_time_packed_from_binary`).
fn time2_hundredths(buf: &mut ParseBuf<'_>) -> io::Result<Value> {
    let bytes = buf
        .checked_eat(4)
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "TIME value"))?;
    let mut int =
        (i64::from(bytes[0]) << 16 | i64::from(bytes[1]) << 8 | i64::from(bytes[2])) - 0x80_0000;
    let mut frac = i64::from(bytes[3]);
    if int < 0 && frac > 0 {
        int += 1;
        frac -= 0x100;
    }
    Ok(time_from_packed((int << 24) + frac * 10_000))
}

/// A column's kind from the event alone, for a column
/// `information_schema` does not know (dropped since the event).
fn fallback_kind(column_type: ColumnType, unsigned: bool) -> Kind {
    use ColumnType::*;
    match column_type {
        MYSQL_TYPE_TINY => Kind::Int { unsigned, bytes: 1 },
        MYSQL_TYPE_SHORT => Kind::Int { unsigned, bytes: 2 },
        MYSQL_TYPE_INT24 => Kind::Int { unsigned, bytes: 3 },
        MYSQL_TYPE_LONG => Kind::Int { unsigned, bytes: 4 },
        MYSQL_TYPE_LONGLONG => Kind::Int { unsigned, bytes: 8 },
        MYSQL_TYPE_FLOAT => Kind::Float,
        MYSQL_TYPE_DOUBLE => Kind::Double,
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => Kind::Decimal,
        MYSQL_TYPE_JSON => Kind::Json,
        MYSQL_TYPE_GEOMETRY => Kind::Binary { width: None },
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => Kind::Date,
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => Kind::DateTime,
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => Kind::Timestamp,
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => Kind::Time,
        MYSQL_TYPE_YEAR => Kind::Year,
        MYSQL_TYPE_BIT => Kind::Bit,
        MYSQL_TYPE_ENUM => Kind::Enum(vec![]),
        MYSQL_TYPE_SET => Kind::Set(vec![]),
        // Text or bytes: text when it is UTF-8, else base64.
        _ => Kind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(bytes: [u8; 4]) -> Value {
        time2_hundredths(&mut ParseBuf(&bytes)).unwrap()
    }

    #[test]
    fn negative_times_with_hundredths() {
        // -26:03:04.50, as MariaDB writes TIME(2): the whole seconds
        // rounded towards zero less one, and 0x100 - 50 hundredths.
        let whole: i64 = 26 << 12 | 3 << 6 | 4;
        let int = 0x80_0000 - whole - 1;
        let b = [
            (int >> 16) as u8,
            (int >> 8) as u8,
            int as u8,
            (0x100 - 50) as u8,
        ];
        assert_eq!(time(b), Value::Time(true, 1, 2, 3, 4, 500_000));
        let int = 0x80_0000 + whole;
        let b = [(int >> 16) as u8, (int >> 8) as u8, int as u8, 50];
        assert_eq!(time(b), Value::Time(false, 1, 2, 3, 4, 500_000));
        assert!(time2_hundredths(&mut ParseBuf(&[1, 2])).is_err());
    }
}
