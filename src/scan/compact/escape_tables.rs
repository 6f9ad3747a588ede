//! The tables of sixteen that the SIMD steps look bytes up in with a byte shuffle (by one
//! half of each byte): the marks that stop a block, and what checks and values the two hex
//! digits of a `\u00XX` escape. The same in `avx2.rs` and `avx512.rs`.

/// For each lower half of a byte, the mark with that lower half (backslash, `"`, `=`, space),
/// or a byte with another lower half.
pub(super) const MARKS: [u8; 16] = {
    let mut t = [0u8; 16];
    let mut n = 0;
    while n < 16 {
        t[n] = n as u8 ^ 1;
        n += 1;
    }
    t[b' ' as usize & 15] = b' ';
    t[b'"' as usize & 15] = b'"';
    t[b'=' as usize & 15] = b'=';
    t[b'\\' as usize & 15] = b'\\';
    t
};

/// Which high digits go with a low digit, by the low digit's lower half: bits 0 to 3 for a
/// number, 4 to 7 for a letter; in each, one bit for `2`, `3`, `4` or `6`, `5` or `7`.
/// (`+` is 2B, `/` 2F, digits 30 to 39, letters 41 to 5A and 61 to 7A.)
pub(super) const WITH_LOW: [u8; 16] = {
    let (two, three, four, five) = (1, 2, 4, 8);
    let mut t = [0u8; 16];
    t[0] = three | five;
    let mut n = 1;
    while n < 10 {
        t[n] = three | four | five;
        n += 1;
    }
    // `A` after 4 to 7; `B` and `F` after 2 (`+`, `/`), 4 and 6; `C` to `E` after 4 and 6.
    t[1] |= (four | five) << 4;
    t[2] |= (two | four) << 4;
    t[3] |= four << 4;
    t[4] |= four << 4;
    t[5] |= four << 4;
    t[6] |= (two | four) << 4;
    t
};

/// By the low digit's upper half: a number (`3`), a letter (`4`, `6`).
pub(super) const WITH_LOW_HALF: [u8; 16] = {
    let mut t = [0u8; 16];
    t[3] = 0x0F;
    t[4] = 0xF0;
    t[6] = 0xF0;
    t
};

/// By the high digit (`2` at 10 to `7` at 15).
pub(super) const WITH_HIGH: [u8; 16] = {
    let mut t = [0u8; 16];
    t[10] = 0x11;
    t[11] = 0x22;
    t[12] = 0x44;
    t[13] = 0x88;
    t[14] = 0x44;
    t[15] = 0x88;
    t
};

/// What a letter adds to its lower half (`a` is 1): 9, by the upper half.
pub(super) const LETTER: [u8; 16] = {
    let mut t = [0u8; 16];
    t[4] = 9;
    t[6] = 9;
    t
};
