//! Seeded mutations of an encoded message, for the decoders' fuzz tests (test builds only):
//! truncations, random bytes, and a few bytes changed in place.

/// A xorshift64 generator: the same seed gives the same run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One mutation of `good`: cut short, replaced by random bytes (up to `max_len`), or up to four
/// of its bytes changed.
pub fn mutate(good: &[u8], rng: &mut Rng, max_len: u64) -> Vec<u8> {
    let mut m = good.to_vec();
    match rng.next() % 3 {
        0 => m.truncate((rng.next() % (good.len() as u64 + 1)) as usize),
        1 => m = (0..rng.next() % max_len).map(|_| rng.next() as u8).collect(),
        _ => {
            for _ in 0..1 + rng.next() % 4 {
                let i = (rng.next() % m.len() as u64) as usize;
                m[i] = rng.next() as u8;
            }
        }
    }
    m
}
