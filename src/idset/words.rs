//! The words of an [`IdSet`](super::IdSet): inline for ids below 512, on
//! the heap above.

/// Words kept inline: ids 0-511, every CPU of most hosts.
const INLINE_WORDS: usize = 8;

/// The words of a set: inline when few, else on the heap.
#[derive(Clone)]
pub(super) enum Words {
    Inline { len: u8, buf: [u64; INLINE_WORDS] },
    Heap(Vec<u64>),
}

impl Default for Words {
    fn default() -> Self {
        Words::Inline {
            len: 0,
            buf: [0; INLINE_WORDS],
        }
    }
}

impl Words {
    /// `len` zero words.
    pub(super) fn zeroed(len: usize) -> Self {
        if len <= INLINE_WORDS {
            Words::Inline {
                len: len as u8,
                buf: [0; INLINE_WORDS],
            }
        } else {
            Words::Heap(vec![0; len])
        }
    }

    pub(super) fn as_slice(&self) -> &[u64] {
        match self {
            Words::Inline { len, buf } => &buf[..*len as usize],
            Words::Heap(v) => v,
        }
    }

    pub(super) fn as_mut_slice(&mut self) -> &mut [u64] {
        match self {
            Words::Inline { len, buf } => &mut buf[..*len as usize],
            Words::Heap(v) => v,
        }
    }

    /// Grows with zero words or shrinks to `new_len` words.
    pub(super) fn resize(&mut self, new_len: usize) {
        match self {
            Words::Inline { len, buf } if new_len <= INLINE_WORDS => {
                buf[new_len.min(*len as usize)..].fill(0);
                *len = new_len as u8;
            }
            Words::Inline { len, buf } => {
                let mut v = buf[..*len as usize].to_vec();
                v.resize(new_len, 0);
                *self = Words::Heap(v);
            }
            Words::Heap(v) => v.resize(new_len, 0),
        }
    }
}

impl std::ops::Deref for Words {
    type Target = [u64];

    fn deref(&self) -> &[u64] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for Words {
    fn deref_mut(&mut self) -> &mut [u64] {
        self.as_mut_slice()
    }
}
