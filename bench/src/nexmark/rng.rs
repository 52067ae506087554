//! The per-event random number generator: a bit-exact replica of the parts of
//! `rand` 0.8 (`SmallRng` = Xoshiro256++ on 64-bit targets, PCG32-expanded
//! `seed_from_u64`,
//! `gen_range`, `gen::<f32>`, `SliceRandom::choose`) that the reference `nexmark`
//! crate uses, so that our generator with seed 0 reproduces its events field for
//! field. Reproducing the algorithms here, rather than depending on `rand`, keeps
//! the sampling code inlinable and free of allocation.
//!
//! A fast mode replaces `rand`'s bounded-integer sampler, which is slow for the
//! ranges Nexmark uses most, with an equally uniform one (see
//! [`EventRng::below_u64`]); everything else is the same in both modes.
//!
//! Only this module knows how random numbers are drawn; the generator asks for
//! values in the same order as the reference crate does.

/// Xoshiro256++ seeded like `rand` 0.8's `SmallRng`.
#[derive(Clone, Debug)]
pub(crate) struct EventRng {
    s: [u64; 4],
    /// Bounded integers by Lemire's method instead of `rand` 0.8's (see
    /// [`below_u64`](Self::below_u64)).
    fast: bool,
}

impl EventRng {
    /// Same state as `SmallRng::seed_from_u64(state)` in `rand` 0.8 on 64-bit:
    /// `SmallRng` does not override `rand_core`'s default `seed_from_u64`, which fills
    /// the 32-byte seed with eight PCG32 outputs (little-endian). `fast` selects the
    /// bounded-integer sampler (see [`below_u64`](Self::below_u64)).
    #[inline]
    pub(crate) fn seed_from_u64(mut state: u64, fast: bool) -> Self {
        let mut s = [0u64; 4];
        for word in &mut s {
            let low = pcg32(&mut state);
            let high = pcg32(&mut state);
            *word = u64::from(low) | (u64::from(high) << 32);
        }
        if s == [0; 4] {
            // Xoshiro256++'s `from_seed` maps the all-zero seed to its own
            // SplitMix64-based `seed_from_u64(0)`.
            const PHI: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut state = 0u64;
            for word in &mut s {
                state = state.wrapping_add(PHI);
                *word = splitmix_finish(state);
            }
        }
        EventRng { s, fast }
    }

    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    #[inline]
    pub(crate) fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// A uniform integer in `0..n`.
    ///
    /// Reference mode: `gen_range(0..n)` for `u64`/`usize` (`UniformInt::sample_single`),
    /// whose conservative rejection zone rejects half of all draws when `n` is a power
    /// of two (the hot ratios 2 and 4): each rejection is a mispredicted branch, and
    /// this dominates the cost of a bid. Fast mode: Lemire's nearly-divisionless
    /// method with the exact zone, which practically never rejects. Both are exactly
    /// uniform; they map random words to values differently.
    #[inline]
    pub(crate) fn below_u64(&mut self, n: u64) -> u64 {
        assert!(n > 0, "cannot sample empty range");
        if self.fast {
            let mut m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) < n {
                let threshold = n.wrapping_neg() % n;
                while (m as u64) < threshold {
                    m = u128::from(self.next_u64()) * u128::from(n);
                }
            }
            return (m >> 64) as u64;
        }
        let zone = (n << n.leading_zeros()).wrapping_sub(1);
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) <= zone {
                return (m >> 64) as u64;
            }
        }
    }

    /// A uniform integer in `0..n`: `gen_range(0..n)` for `u32`/`i32` (and `choose`,
    /// via `gen_index`) in reference mode; see [`below_u64`](Self::below_u64).
    #[inline]
    pub(crate) fn below_u32(&mut self, n: u32) -> u32 {
        assert!(n > 0, "cannot sample empty range");
        if self.fast {
            let mut m = u64::from(self.next_u32()) * u64::from(n);
            if (m as u32) < n {
                let threshold = n.wrapping_neg() % n;
                while (m as u32) < threshold {
                    m = u64::from(self.next_u32()) * u64::from(n);
                }
            }
            return (m >> 32) as u32;
        }
        let zone = (n << n.leading_zeros()).wrapping_sub(1);
        loop {
            let m = u64::from(self.next_u32()) * u64::from(n);
            if (m as u32) <= zone {
                return (m >> 32) as u32;
            }
        }
    }

    /// `gen_range(b'a'..=b'z')`: `u8` ranges use the exact-modulus rejection zone.
    #[inline]
    pub(crate) fn lowercase_letter(&mut self) -> u8 {
        const RANGE: u32 = 26;
        const ZONE: u32 = u32::MAX - ((u32::MAX - RANGE + 1) % RANGE);
        loop {
            let m = u64::from(self.next_u32()) * u64::from(RANGE);
            if (m as u32) <= ZONE {
                return b'a' + (m >> 32) as u8;
            }
        }
    }

    /// `gen::<f32>()`: 24 random bits scaled into `[0, 1)`.
    #[inline]
    pub(crate) fn unit_f32(&mut self) -> f32 {
        let bits = self.next_u32() >> 8;
        (1.0 / (1u32 << 24) as f32) * bits as f32
    }

    /// `SliceRandom::choose` on a non-empty slice.
    #[inline]
    pub(crate) fn choose<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let len = u32::try_from(items.len()).expect("choose: slice longer than u32::MAX");
        &items[self.below_u32(len) as usize]
    }

    /// Appends `len` random lowercase letters (`gen_exact_string`).
    #[inline]
    pub(crate) fn push_letters(&mut self, out: &mut String, len: usize) {
        out.reserve(len);
        for _ in 0..len {
            out.push(char::from(self.lowercase_letter()));
        }
    }
}

/// One step of `rand_core` 0.6's PCG32 seed expander.
#[inline]
fn pcg32(state: &mut u64) -> u32 {
    const MUL: u64 = 6_364_136_223_846_793_005;
    const INC: u64 = 11_634_580_027_462_260_723;
    *state = state.wrapping_mul(MUL).wrapping_add(INC);
    let state = *state;
    let xorshifted = (((state >> 18) ^ state) >> 27) as u32;
    xorshifted.rotate_right((state >> 59) as u32)
}

/// The SplitMix64 output function (without the state increment).
#[inline]
pub(crate) fn splitmix_finish(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro_reference_vector() {
        // rand 0.8's own reference test for Xoshiro256PlusPlus::from_seed([1, 2, 3, 4]).
        let mut rng = EventRng {
            s: [1, 2, 3, 4],
            fast: false,
        };
        let expected = [
            41943041,
            58720359,
            3588806011781223,
            3591011842654386,
            9228616714210784205,
            9973669472204895162,
            14011001112246962877,
            12406186145184390807,
            15849039046786891736,
            10450023813501588000,
        ];
        for e in expected {
            assert_eq!(rng.next_u64(), e);
        }
    }
}
