//! What the SIMD steps (`avx2.rs`, `avx512.rs`) look for: the marks that stop a block (in a
//! table of sixteen, looked up by the lower half of each byte with a byte shuffle), and the
//! `\u` escapes they take.

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

/// The `\u` escapes the steps take are those serializers write for symbols: `\u002B` (`+`)
/// and `\u002F` (`/`), in either case. Their last digits differ only in these bits: `0x04`
/// (`B` or `F`) and `0x20` (the case). Other escapes of symbols (`\u0041` for `A`) stop a
/// step, for the portable path.
pub(super) const SYMBOL_AND_CASE: u8 = 0x24;

/// The symbol of a `\u` escape the steps take, by the lower half of its last digit.
pub(super) const CODED_SYMBOLS: [u8; 16] = {
    let mut t = [0u8; 16];
    t[b'B' as usize & 15] = b'+';
    t[b'F' as usize & 15] = b'/';
    t
};
