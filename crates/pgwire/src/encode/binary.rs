//! PostgreSQL's binary (`*send`) formats that take more than a big-endian number.

use bytes::{BufMut, BytesMut};

/// Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch for `date`.
pub(crate) const EPOCH_DAYS: i32 = 10_957;

/// Microseconds from 1970-01-01 to 2000-01-01, PostgreSQL's epoch for timestamps.
pub(crate) const EPOCH_MICROS: i64 = 946_684_800_000_000;

/// `interval_send`: microseconds, days, months.
pub(crate) fn interval(out: &mut BytesMut, months: i32, days: i32, micros: i64) {
    out.put_i64(micros);
    out.put_i32(days);
    out.put_i32(months);
}

/// `array_send`'s header for a one-dimensional array of `len` elements of type `oid`
/// (lower bound 1; an empty array has no dimension).
pub(crate) fn array_header(out: &mut BytesMut, len: usize, has_null: bool, oid: u32) {
    out.put_i32(i32::from(len > 0));
    out.put_i32(i32::from(has_null));
    out.put_u32(oid);
    if len > 0 {
        out.put_i32(i32::try_from(len).unwrap_or(i32::MAX));
        out.put_i32(1);
    }
}

/// `numeric_send` of an unscaled decimal with `scale` fraction digits: base-10000 digits
/// around the decimal point, the weight of the first, the sign and the display scale.
pub(crate) fn numeric(out: &mut BytesMut, unscaled: i128, scale: i8) {
    let negative = unscaled < 0;
    let mut buffer = itoa::Buffer::new();
    let text = buffer.format(unscaled.unsigned_abs()).as_bytes();
    // The decimal digits and how many of them are before the point.
    let (digits, whole): (Vec<u8>, i64) = if scale >= 0 {
        let scale = usize::from(scale.unsigned_abs());
        let mut digits = vec![b'0'; scale.saturating_sub(text.len())];
        digits.extend_from_slice(text);
        let whole = digits.len() - scale;
        (digits, i64::try_from(whole).unwrap_or(0))
    } else {
        let mut digits = text.to_vec();
        digits.extend(std::iter::repeat_n(b'0', usize::from(scale.unsigned_abs())));
        let whole = digits.len();
        (digits, i64::try_from(whole).unwrap_or(0))
    };
    // Align to groups of four: pad the integer part on the left to a multiple of 4.
    let lead = (4 - whole.rem_euclid(4)) % 4;
    let mut padded = vec![b'0'; usize::try_from(lead).unwrap_or(0)];
    padded.extend_from_slice(&digits);
    while padded.len() % 4 != 0 {
        padded.push(b'0');
    }
    let mut groups: Vec<i16> = padded
        .chunks(4)
        .map(|c| c.iter().fold(0i16, |n, d| n * 10 + i16::from(d - b'0')))
        .collect();
    let mut weight = (whole + lead) / 4 - 1;
    let leading = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..leading);
    weight -= i64::try_from(leading).unwrap_or(0);
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    out.put_i16(i16::try_from(groups.len()).unwrap_or(i16::MAX));
    out.put_i16(i16::try_from(weight).unwrap_or(0));
    out.put_u16(if negative && !groups.is_empty() {
        0x4000
    } else {
        0
    });
    out.put_u16(u16::from(scale.max(0).unsigned_abs()));
    for group in groups {
        out.put_i16(group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(unscaled: i128, scale: i8) -> Vec<i16> {
        let mut out = BytesMut::new();
        numeric(&mut out, unscaled, scale);
        out.chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    #[test]
    fn numerics_are_base_10000_groups_around_the_point() {
        // 12345.678: groups 1 | 2345 . 6780, weight 1, dscale 3.
        assert_eq!(words(12_345_678, 3), vec![3, 1, 0, 3, 1, 2345, 6780]);
        // -0.005: one group 0050 at weight -1.
        assert_eq!(words(-5, 3), vec![1, -1, 0x4000, 3, 50]);
        // 0.00 has no groups.
        assert_eq!(words(0, 2), vec![0, 0, 0, 2]);
        // 10000: one group 1 at weight 1.
        assert_eq!(words(10_000, 0), vec![1, 1, 0, 0, 1]);
        // 1200 (12 at scale -2).
        assert_eq!(words(12, -2), vec![1, 0, 0, 0, 1200]);
    }
}
