//! Reading a small header from the front of a fuzz input, and turning it into chunk
//! boundaries.

/// Reads header bytes from the front of the fuzz input; past the end it
/// yields zeros, so every input is usable.
pub struct Header<'a> {
    data: &'a [u8],
}

impl<'a> Header<'a> {
    /// A header read from the front of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// The next header byte (0 past the end).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// Up to 8 chunk sizes (0..=255 each; 0 means "call again with no new
    /// bytes", which the resume contract allows).
    pub fn chunk_sizes(&mut self) -> Vec<usize> {
        let n = self.byte() % 9;
        (0..n).map(|_| usize::from(self.byte())).collect()
    }

    /// What is left: the payload.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Cumulative ends of the chunks over `total` bytes; the last is `total`.
pub fn boundaries(sizes: &[usize], total: usize) -> Vec<usize> {
    let mut ends = Vec::with_capacity(sizes.len() + 1);
    let mut at = 0usize;
    for &s in sizes {
        at = (at + s).min(total);
        ends.push(at);
    }
    ends.push(total);
    ends
}
