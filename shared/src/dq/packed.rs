//! Verdicts stored beside their block: the receiver computes them once,
//! before the block is committed, so a block published again (after a
//! broker restart or a receiver restart) carries the same verdicts and is
//! not mistaken for its own duplicate.
//!
//! Layout: zstd(postcard(`Vec<PackedVerdict>`)), one per point of the block
//! in record order. A packed verdict is a check-flag nibble per check, the
//! effective status, and the worst flag, late bit and withhold code.

use serde::{Deserialize, Serialize};

use super::{Check, Flag, Verdict, Withhold};

// Four bits per check must fit a u128.
const _: () = assert!(Check::COUNT * 4 <= 128);

/// One verdict in at most 27 bytes (postcard writes integers as varints).
///
/// `checks` was a `u64` while there were 16 checks. Postcard encodes `u64`
/// and `u128` alike as LEB128 varints, so verdicts stored by that release
/// decode unchanged (the later checks as not reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct PackedVerdict {
    /// Four bits per check, in [`Check::ALL`] order: 0 = not reported,
    /// else the flag's code.
    checks: u128,
    status: u32,
    /// Bits 0–3 worst flag code, bit 4 late, bits 8–15 withhold
    /// (0 none, 1 duplicate, 16 + check index quarantine).
    bits: u16,
}

/// Why stored verdicts could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerdictsError {
    /// Not zstd, or larger than allowed once decompressed.
    #[error("stored verdicts do not decompress within the limit")]
    Decompress,
    /// Not a list of packed verdicts.
    #[error("stored verdicts do not decode")]
    Decode,
    /// A field holds a value no verdict has.
    #[error("stored verdict holds an unknown code")]
    Code,
}

fn pack(v: &Verdict) -> PackedVerdict {
    let mut checks = 0u128;
    for (i, f) in v.flags.iter().enumerate() {
        if let Some(f) = f {
            checks |= u128::from(f.code()) << (4 * i);
        }
    }
    let withhold: u16 = match v.withhold {
        None => 0,
        Some(Withhold::Duplicate) => 1,
        Some(Withhold::Quarantine(c)) => 16 + c.index() as u16,
    };
    PackedVerdict {
        checks,
        status: v.effective_status,
        bits: u16::from(v.worst.code()) | (u16::from(v.late) << 4) | (withhold << 8),
    }
}

fn unpack(p: PackedVerdict) -> Result<Verdict, VerdictsError> {
    let mut v = Verdict::default();
    for (i, slot) in v.flags.iter_mut().enumerate() {
        let code = ((p.checks >> (4 * i)) & 0xf) as u8;
        if code != 0 {
            *slot = Some(Flag::from_code(code).ok_or(VerdictsError::Code)?);
        }
    }
    v.worst = Flag::from_code((p.bits & 0xf) as u8).ok_or(VerdictsError::Code)?;
    v.late = p.bits & 0x10 != 0;
    v.effective_status = p.status;
    v.withhold = match p.bits >> 8 {
        0 => None,
        1 => Some(Withhold::Duplicate),
        w if (16..16 + Check::COUNT as u16).contains(&w) => {
            Some(Withhold::Quarantine(Check::ALL[usize::from(w - 16)]))
        }
        _ => return Err(VerdictsError::Code),
    };
    if p.bits & 0xe0 != 0 {
        return Err(VerdictsError::Code);
    }
    Ok(v)
}

/// Store a block's verdicts.
pub fn encode_verdicts(verdicts: &[Verdict]) -> Vec<u8> {
    let packed: Vec<PackedVerdict> = verdicts.iter().map(pack).collect();
    let raw = postcard::to_allocvec(&packed).unwrap_or_default();
    zstd::bulk::compress(&raw, 1).unwrap_or_default()
}

/// Read a block's verdicts back, at most `max` of them.
pub fn decode_verdicts(bytes: &[u8], max: usize) -> Result<Vec<Verdict>, VerdictsError> {
    // A packed verdict is at most 27 bytes in postcard (varints of at most
    // 19, 5 and 3 bytes), plus the length prefix.
    let cap = max.saturating_mul(27).saturating_add(10);
    let raw = zstd::bulk::decompress(bytes, cap).map_err(|_| VerdictsError::Decompress)?;
    let packed: Vec<PackedVerdict> =
        postcard::from_bytes(&raw).map_err(|_| VerdictsError::Decode)?;
    if packed.len() > max {
        return Err(VerdictsError::Decode);
    }
    packed.into_iter().map(unpack).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_stored_with_16_checks_still_decode() {
        /// The layout before `ts_floor` and `ts_precision`.
        #[derive(Serialize)]
        struct PackedBefore {
            checks: u64,
            status: u32,
            bits: u16,
        }
        // syntax 1, ts_sentinel 4, digital_state 3; worst fail; late.
        let old = PackedBefore {
            checks: 1 | (4 << (4 * 4)) | (3 << (4 * 15)),
            status: 0x8000_0000,
            bits: 4 | 0x10,
        };
        let raw = postcard::to_allocvec(&vec![old]).expect("encodes");
        let bytes = zstd::bulk::compress(&raw, 1).expect("compresses");
        let got = decode_verdicts(&bytes, 1).expect("decodes");
        let v = got.first().expect("one verdict");
        assert_eq!(v.flag(Check::Syntax), Some(Flag::Pass));
        assert_eq!(v.flag(Check::TsSentinel), Some(Flag::Fail));
        assert_eq!(v.flag(Check::DigitalState), Some(Flag::Suspect));
        assert_eq!(v.flag(Check::TsFloor), None);
        assert_eq!(v.flag(Check::TsPrecision), None);
        assert_eq!(
            (v.worst, v.late, v.effective_status),
            (Flag::Fail, true, 0x8000_0000)
        );
        // And the new checks, in the high bits, round-trip.
        let mut new = Verdict::default();
        new.set(Check::TsFloor, Flag::Fail);
        new.set(Check::TsPrecision, Flag::Fail);
        new.worst = Flag::Fail;
        assert_eq!(decode_verdicts(&encode_verdicts(&[new]), 1), Ok(vec![new]));
    }

    #[test]
    fn verdicts_round_trip_and_damage_is_refused() {
        let mut a = Verdict::default();
        a.flags[Check::RateOfChange.index()] = Some(Flag::Suspect);
        a.flags[Check::Syntax.index()] = Some(Flag::Pass);
        a.worst = Flag::Suspect;
        a.effective_status = 0x4000_0000;
        a.late = true;
        let b = Verdict {
            withhold: Some(Withhold::Quarantine(Check::TsFuture)),
            worst: Flag::Fail,
            ..Verdict::default()
        };
        let c = Verdict {
            withhold: Some(Withhold::Duplicate),
            ..Verdict::default()
        };
        let bytes = encode_verdicts(&[a, b, c]);
        assert_eq!(decode_verdicts(&bytes, 3), Ok(vec![a, b, c]));
        assert!(
            decode_verdicts(&bytes, 2).is_err(),
            "more verdicts than points"
        );
        assert!(decode_verdicts(b"junk", 3).is_err());
        for i in 0..bytes.len() {
            let mut d = bytes.clone();
            d[i] ^= 0x55;
            // Never panics; either refused or some well-formed verdicts.
            let _ = decode_verdicts(&d, 3);
        }
    }
}
