//! GGML block formats: how one block of bytes decodes to floats.
//!
//! Each decoder writes `block_elems` floats for one block; they are the executable definition of the
//! format (the same arithmetic as ggml's `dequantize_row_*`), used by the mat-mul kernels block by block
//! and by `quant_dequantize`.

/// A ggml quantization type the kernels understand; the discriminant is ggml's type id (the number in
/// GGUF tensor infos), so `t as u32` can name a format in a const generic parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum QType {
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q4K = 12,
    Q5K = 13,
    Q6K = 14,
    /// Unquantized rows (safetensors weights kept at their own width), in 32-element "blocks".
    F32 = 0,
    F16 = 1,
    BF16 = 30,
}

impl QType {
    /// From ggml's type id (the numbers in GGUF tensor infos).
    pub fn from_id(id: u32) -> Option<QType> {
        Some(match id {
            2 => QType::Q4_0,
            3 => QType::Q4_1,
            6 => QType::Q5_0,
            7 => QType::Q5_1,
            8 => QType::Q8_0,
            12 => QType::Q4K,
            13 => QType::Q5K,
            14 => QType::Q6K,
            0 => QType::F32,
            1 => QType::F16,
            30 => QType::BF16,
            _ => return None,
        })
    }

    pub fn block_elems(self) -> usize {
        match self {
            QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q5_1 | QType::Q8_0 => 32,
            QType::F32 | QType::F16 | QType::BF16 => 32,
            QType::Q4K | QType::Q5K | QType::Q6K => 256,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            QType::Q4_0 => 18,
            QType::Q4_1 => 20,
            QType::Q5_0 => 22,
            QType::Q5_1 => 24,
            QType::Q8_0 => 34,
            QType::Q4K => 144,
            QType::Q5K => 176,
            QType::Q6K => 210,
            QType::F32 => 128,
            QType::F16 | QType::BF16 => 64,
        }
    }
}

/// IEEE half to single precision (ggml stores block scales as f16).
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if mant == 0 {
            sign
        } else {
            // subnormal: value = mant * 2^-24
            let v = mant as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
    } else if exp == 31 {
        sign | 0x7f80_0000 | (mant << 13)
    } else {
        sign | ((exp + 112) << 23) | (mant << 13)
    };
    f32::from_bits(bits)
}

#[inline(always)]
fn half(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Scale and min of sub-block `j` (0..8) packed in 12 bytes (Q4_K and Q5_K).
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        (
            ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4)) as f32,
            ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as f32,
        )
    }
}

/// Single to half precision, rounding to nearest even (what ggml's `GGML_FP32_TO_FP16` does).
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let mant = bits & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if mant != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 31 {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = mant | 0x80_0000;
        let shift = (14 - e) as u32;
        let half_bits = m >> shift;
        let rest = m & ((1 << shift) - 1);
        let halfway = 1 << (shift - 1);
        let round = rest > halfway || (rest == halfway && half_bits & 1 == 1);
        return sign | (half_bits + round as u32) as u16;
    }
    let half_bits = ((e as u32) << 10) | (mant >> 13);
    let rest = mant & 0x1fff;
    let round = rest > 0x1000 || (rest == 0x1000 && half_bits & 1 == 1);
    sign | (half_bits + round as u32) as u16 // a carry into the exponent is the correct rounding
}

/// Quantize 32 floats into one Q8_0 block (ggml's `quantize_row_q8_0_ref`: scale = max|x| / 127).
pub fn quantize_q8_0(x: &[f32], block: &mut [u8]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    block[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    for (q, v) in block[2..34].iter_mut().zip(x) {
        *q = (v * id).round() as i8 as u8;
    }
}

/// Decode one block `b` (exactly `block_bytes` long) into `y` (exactly `block_elems` long).
#[inline(always)]
pub fn decode_block(t: QType, b: &[u8], y: &mut [f32]) {
    match t {
        QType::Q4_0 => {
            let d = half(b, 0);
            let qs = &b[2..18];
            for j in 0..16 {
                y[j] = d * ((qs[j] & 0xf) as i32 - 8) as f32;
                y[j + 16] = d * ((qs[j] >> 4) as i32 - 8) as f32;
            }
        }
        QType::Q4_1 => {
            let (d, m) = (half(b, 0), half(b, 2));
            let qs = &b[4..20];
            for j in 0..16 {
                y[j] = d * (qs[j] & 0xf) as f32 + m;
                y[j + 16] = d * (qs[j] >> 4) as f32 + m;
            }
        }
        QType::Q5_0 => {
            let d = half(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let qs = &b[6..22];
            for j in 0..16 {
                let h0 = ((qh >> j) & 1) << 4;
                let h1 = ((qh >> (j + 16)) & 1) << 4;
                y[j] = d * (((qs[j] & 0xf) as u32 | h0) as i32 - 16) as f32;
                y[j + 16] = d * (((qs[j] >> 4) as u32 | h1) as i32 - 16) as f32;
            }
        }
        QType::Q5_1 => {
            let (d, m) = (half(b, 0), half(b, 2));
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            let qs = &b[8..24];
            for j in 0..16 {
                let h0 = ((qh >> j) & 1) << 4;
                let h1 = ((qh >> (j + 16)) & 1) << 4;
                y[j] = d * ((qs[j] & 0xf) as u32 | h0) as f32 + m;
                y[j + 16] = d * ((qs[j] >> 4) as u32 | h1) as f32 + m;
            }
        }
        QType::Q8_0 => {
            let d = half(b, 0);
            for j in 0..32 {
                y[j] = d * (b[2 + j] as i8) as f32;
            }
        }
        QType::Q4K => {
            let (d, dmin) = (half(b, 0), half(b, 2));
            let scales = &b[4..16];
            let qs = &b[16..144];
            for g in 0..4 {
                let (s1, m1) = scale_min_k4(2 * g, scales);
                let (s2, m2) = scale_min_k4(2 * g + 1, scales);
                let (d1, mm1, d2, mm2) = (d * s1, dmin * m1, d * s2, dmin * m2);
                let q = &qs[32 * g..32 * g + 32];
                let out = &mut y[64 * g..64 * g + 64];
                for l in 0..32 {
                    out[l] = d1 * (q[l] & 0xf) as f32 - mm1;
                    out[l + 32] = d2 * (q[l] >> 4) as f32 - mm2;
                }
            }
        }
        QType::Q5K => {
            let (d, dmin) = (half(b, 0), half(b, 2));
            let scales = &b[4..16];
            let qh = &b[16..48];
            let qs = &b[48..176];
            for g in 0..4 {
                let (s1, m1) = scale_min_k4(2 * g, scales);
                let (s2, m2) = scale_min_k4(2 * g + 1, scales);
                let (d1, mm1, d2, mm2) = (d * s1, dmin * m1, d * s2, dmin * m2);
                let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
                let q = &qs[32 * g..32 * g + 32];
                let out = &mut y[64 * g..64 * g + 64];
                for l in 0..32 {
                    let hi1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                    let hi2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                    out[l] = d1 * ((q[l] & 0xf) + hi1) as f32 - mm1;
                    out[l + 32] = d2 * ((q[l] >> 4) + hi2) as f32 - mm2;
                }
            }
        }
        QType::F32 => {
            for (o, c) in y.iter_mut().zip(b.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        QType::F16 => {
            for (o, c) in y.iter_mut().zip(b.chunks_exact(2)) {
                *o = f16_to_f32(u16::from_le_bytes([c[0], c[1]]));
            }
        }
        QType::BF16 => {
            for (o, c) in y.iter_mut().zip(b.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16);
            }
        }
        QType::Q6K => {
            let ql_all = &b[0..128];
            let qh_all = &b[128..192];
            let sc_all = &b[192..208];
            let d = half(b, 208);
            for n in 0..2 {
                let ql = &ql_all[64 * n..64 * n + 64];
                let qh = &qh_all[32 * n..32 * n + 32];
                let sc = &sc_all[8 * n..8 * n + 8];
                let out = &mut y[128 * n..128 * n + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_round_trips_through_its_ggml_id() {
        for t in [QType::Q4_0, QType::Q4_1, QType::Q5_0, QType::Q5_1, QType::Q8_0, QType::Q4K, QType::Q5K,
                  QType::Q6K, QType::F32, QType::F16, QType::BF16] {
            assert_eq!(QType::from_id(t as u32), Some(t));
        }
        assert_eq!(QType::from_id(4), None); // Q4_2, removed from ggml
    }

    #[test]
    fn half_conversion_matches_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert!(f16_to_f32(0x7c00).is_infinite());
    }

    #[test]
    fn f16_rounding_round_trips_and_ties_to_even() {
        for h in [0x3c00u16, 0xc000, 0x3555, 0x0001, 0x03ff, 0x7bff, 0x8000] {
            assert_eq!(f32_to_f16(f16_to_f32(h)), h);
        }
        assert_eq!(f32_to_f16(1.0 + 1.0 / 2048.0), 0x3c00); // halfway, even neighbour below
        assert_eq!(f32_to_f16(1.0 + 3.0 / 2048.0), 0x3c02); // halfway, even neighbour above
        assert_eq!(f32_to_f16(1e6), 0x7c00);
    }

    #[test]
    fn q4_1_block_decodes_nibbles_low_then_high() {
        let mut b = vec![0u8; 20];
        b[0..2].copy_from_slice(&0x3c00u16.to_le_bytes()); // d = 1
        b[2..4].copy_from_slice(&0xc000u16.to_le_bytes()); // m = -2
        b[4] = 0x53; // element 0 = 3, element 16 = 5
        let mut y = [0f32; 32];
        decode_block(QType::Q4_1, &b, &mut y);
        assert_eq!(y[0], 1.0);
        assert_eq!(y[16], 3.0);
        assert_eq!(y[1], -2.0);
    }
}
