//! Payload text made into bare base64 symbols in one pass, for the decoder to take in large
//! batches: whitespace left out, the escapes that stand for symbols undone. For FHIR XML the
//! same pass writes the attribute text: symbols as they are, whitespace only between groups of
//! four.
//!
//! Backends wrap base64 (a space, `\n` or `\r\n` every 76 characters) or escape some of its
//! characters (`\/`, `\u002B`), so the runs between are short. Blocks of 32 bytes are copied
//! and compared in SIMD registers (as in [`super::plain`]) in the same step; and once two lines
//! of the same length end with the same separator, the lines after them are copied whole, only
//! the separator being looked for where it should stand. On CPUs with AVX-512 (found at run
//! time, in `compact/avx512.rs`), blocks of 64 bytes with escapes of symbols are taken whole,
//! the escapes squeezed out rather than taken one at a time: `\/` from the start, `\u002B`
//! and `\u002F` (either case: the `\u` escapes serializers write for symbols) once one was
//! seen (the step is longer with them). With AVX2 only (`compact/avx2.rs`), blocks of 32 bytes
//! the same way. Elsewhere, and for whatever those steps leave (other `\u` escapes of
//! symbols among them), the portable way here: a block at a time, and each escape read as
//! one word.
//!
//! Natively, nothing here checks that the copied bytes are base64 symbols: the decoder's
//! engine does, on the batch, and the scanner reads the content again the general way when it
//! refuses one (an invalid document, or a line that only looked like the others). For FHIR
//! XML, which does not decode, lines copied whole and what the VBMI step makes are checked
//! as they are written, and only into the text: the decoder counts them as checked groups.

use wide::u8x32;

use super::hex4;

use crate::alphabet::Check;
use crate::simd::{Avx2, Avx512};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod escape_tables;

/// The block looked at in one step.
const BLOCK: usize = 32;

/// Symbols gathered before they are decoded: they stay in cache, and the engine's cost per
/// call is small against them.
const SYMBOLS_CAP: usize = 16 * 1024;

/// Text gathered before it is written out.
const TEXT_CAP: usize = 2 * SYMBOLS_CAP;

/// Lines longer than this are not copied whole (the buffers keep room for one more).
const MAX_LINE: usize = 1024;

/// Lines shorter than this are not worth following.
const MIN_LINE: usize = 16;

/// Room past the caps for the step that crosses them.
const SLACK: usize = MAX_LINE + 2 * BLOCK;

/// What [`Compactor::compact`] took and made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Compacted {
    /// Input bytes taken.
    pub(super) consumed: usize,
    /// Characters of string content they hold (an escape is one).
    pub(super) chars: u64,
    /// Of those, how many come after the last symbol.
    pub(super) trailing: u64,
    /// Symbols made into the symbols buffer.
    pub(super) symbols: usize,
    /// Symbols made in text mode that are not in the symbols buffer: whole groups of four
    /// that stood between those that are, checked against the alphabet already.
    pub(super) checked: usize,
    /// Every symbol in the symbols buffer was checked against the alphabet already (by a step
    /// that checks what it makes).
    pub(super) symbols_checked: bool,
    /// Text made (text mode).
    pub(super) text: usize,
    /// Stopped because the buffers are full, rather than at something for the general path
    /// (the closing quote, `=`, another escape, an escape cut off by the end of the input).
    pub(super) full: bool,
}

/// The whitespace between two lines, as it stands in the input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Separator {
    /// Its bytes, little-endian.
    word: u64,
    /// How many bytes (1 to 8; 0 for none worth following).
    len: u8,
    /// How many characters.
    chars: u8,
    /// Its XML text, between groups.
    text: [u8; 24],
    text_len: u8,
}

/// What a byte that stops a block stands for.
enum Item {
    /// A base64 symbol (not `=`), and the input bytes it takes.
    Symbol(u8, usize),
    /// Whitespace: its XML text, and the input bytes it takes.
    Space(&'static [u8], usize),
    /// Something for the general path.
    Stop,
}

/// The payload's compaction: its buffers, bounded, and the lines seen.
#[derive(Debug)]
pub(super) struct Compactor {
    /// The CPU's AVX2, when it has it, for escaped blocks.
    simd: Option<Avx2>,
    /// The CPU's AVX-512, when it has it, for blocks with any escapes of symbols.
    wide: Option<Avx512>,
    symbols: Vec<u8>,
    text: Vec<u8>,
    /// Bytes of the current line so far.
    line: usize,
    /// The current line holds raw symbols only.
    clean: bool,
    /// The line before it, when clean (0 otherwise), and the separator after it.
    last_line: usize,
    last_separator: Separator,
    /// The last two lines matched: copy the next ones whole.
    striding: bool,
    /// A `\u` escape of a symbol was seen: the SIMD steps look for them too.
    codes: bool,
}

impl Default for Compactor {
    fn default() -> Self {
        Self::new(Avx2::detect(), Avx512::detect())
    }
}

impl Compactor {
    /// A compactor that takes escaped blocks with `wide` or else `simd` when given, the
    /// portable way else. `wide` comes with its own AVX2, which it uses elsewhere.
    pub(super) fn new(simd: Option<Avx2>, wide: Option<Avx512>) -> Self {
        Self {
            simd,
            wide,
            symbols: Vec::new(),
            text: Vec::new(),
            line: 0,
            clean: false,
            last_line: 0,
            last_separator: Separator::default(),
            striding: false,
            codes: false,
        }
    }

    /// The symbols the last call made.
    pub(super) fn symbols(&self, c: &Compacted) -> &[u8] {
        &self.symbols[..c.symbols]
    }

    /// The text the last call made.
    pub(super) fn text(&self, c: &Compacted) -> &[u8] {
        &self.text[..c.text]
    }

    /// Forgets the lines seen: the content is read again another way.
    pub(super) fn forget_lines(&mut self) {
        self.line = 0;
        self.clean = false;
        self.last_line = 0;
        self.striding = false;
    }

    /// Takes payload content from the start of `input` until the buffers are full or something
    /// comes that the general path must see, making symbols and, with `TEXT`, the XML text.
    /// `group`: symbols already in the current group of four, for the text.
    pub(super) fn compact<const TEXT: bool>(&mut self, input: &[u8], group: u8) -> Compacted {
        // Nothing to do at the closing quote: no buffer is made for it.
        if matches!(input.first(), None | Some(b'"' | b'=')) {
            return Compacted::default();
        }
        if self.symbols.is_empty() {
            self.symbols = vec![0; SYMBOLS_CAP + SLACK];
        }
        if TEXT && self.text.is_empty() {
            self.text = vec![0; TEXT_CAP + SLACK];
        }
        let mut symbols = std::mem::take(&mut self.symbols);
        let mut text = std::mem::take(&mut self.text);
        let mut c = Cursor::<TEXT> {
            symbols: &mut symbols,
            text: &mut text,
            group: usize::from(group),
            i: 0,
            n: 0,
            checked: 0,
            t: 0,
            extra: 0,
            trailing: 0,
            line: self.line,
            clean: self.clean,
            codes: self.codes,
            unchecked: false,
            check: Check::new(self.simd),
        };
        // Escaped blocks go to the AVX-512 steps where the CPU has them; else to the AVX2
        // steps.
        let full = match (self.wide, self.simd) {
            #[cfg(target_arch = "x86_64")]
            (Some(wide), _) => wide.vectorize(Run {
                compactor: self,
                c: &mut c,
                input,
                wide: Some(wide),
            }),
            #[cfg(target_arch = "x86_64")]
            (None, Some(simd)) => simd.vectorize(Run {
                compactor: self,
                c: &mut c,
                input,
                wide: None,
            }),
            // Once `\u` escapes came, lines are not copied whole: such text seldom has clean
            // lines, and its loop runs faster without the line copy.
            _ if self.codes => self.run::<TEXT, false>(&mut c, input, None, None),
            _ => self.run::<TEXT, true>(&mut c, input, None, None),
        };
        self.line = c.line;
        self.clean = c.clean;
        self.codes = c.codes;
        let made = Compacted {
            consumed: c.i,
            chars: (c.i - c.extra) as u64,
            trailing: c.trailing as u64,
            symbols: c.n,
            checked: c.checked,
            symbols_checked: !c.unchecked && c.check.passed(),
            text: if TEXT { c.t } else { 0 },
            full,
        };
        self.symbols = symbols;
        self.text = text;
        made
    }

    /// The loop of [`Self::compact`]; true when it stopped because the buffers are full.
    /// `LINES`: lines like the last two are copied whole. `simd`, `wide`: what it is compiled
    /// for.
    #[inline(always)]
    fn run<const TEXT: bool, const LINES: bool>(
        &mut self,
        c: &mut Cursor<'_, TEXT>,
        input: &[u8],
        simd: Option<Avx2>,
        wide: Option<Avx512>,
    ) -> bool {
        loop {
            if c.n >= SYMBOLS_CAP || c.t >= TEXT_CAP {
                return true;
            }
            if LINES && self.striding && c.line == 0 && c.clean {
                let start = c.i;
                if self.stride(c, input, simd) {
                    return true;
                }
                if c.i > start {
                    continue;
                }
            }
            let rest = &input[c.i..];
            if let Some(block) = rest.get(..BLOCK) {
                let block: [u8; BLOCK] = block.try_into().unwrap_or([0; BLOCK]);
                c.store(&block);
                if marks(block) == 0 {
                    // Checked as it goes where that is worth it: FHIR XML, which does not
                    // decode them.
                    if TEXT {
                        c.check.block(block);
                    } else {
                        c.unchecked = true;
                    }
                    c.advance(BLOCK);
                    continue;
                }
                let fast = match (wide, simd) {
                    #[cfg(target_arch = "x86_64")]
                    (Some(wide), _) => match wide.vbmi() {
                        Some(vbmi) => c.unescape(vbmi, input),
                        None => c.unescape(wide, input),
                    },
                    #[cfg(target_arch = "x86_64")]
                    (None, Some(simd)) => c.unescape(simd, input),
                    #[cfg(not(target_arch = "x86_64"))]
                    (Some(wide), _) => match wide {},
                    #[cfg(not(target_arch = "x86_64"))]
                    (None, Some(simd)) => match simd {},
                    (None, None) => Fast::Short,
                };
                let at_mark = match fast {
                    // A step that checks stopped at a byte outside the alphabet: copied as
                    // any other, unchecked, for the decoder to refuse.
                    Fast::AtMark if input.get(c.i).is_some_and(|&b| !is_mark(b)) => {
                        c.copy(&input[c.i..c.i + 1]);
                        c.advance(1);
                        continue;
                    }
                    Fast::AtMark => true,
                    Fast::Again => continue,
                    Fast::Short => c.escaped(input),
                };
                if !at_mark {
                    continue;
                }
            } else {
                // The last bytes of the input.
                let k = rest.iter().position(|&b| is_mark(b)).unwrap_or(rest.len());
                c.copy(&rest[..k]);
                c.advance(k);
                if c.i == input.len() {
                    return false;
                }
            }
            match item(&input[c.i..]) {
                Item::Symbol(symbol, len) => c.symbol(symbol, len),
                Item::Space(..) => self.separator(c, input),
                Item::Stop => return false,
            }
        }
    }

    /// Copies whole lines of the length and separator of the last two; true when the buffers
    /// are full.
    #[inline(always)]
    fn stride<const TEXT: bool>(
        &mut self,
        c: &mut Cursor<'_, TEXT>,
        input: &[u8],
        simd: Option<Avx2>,
    ) -> bool {
        let sep = self.last_separator;
        let len = self.last_line;
        // The text keeps the separators only between groups.
        let aligned = !TEXT || ((c.group + c.n).is_multiple_of(4) && len.is_multiple_of(4));
        if !aligned {
            self.striding = false;
            return false;
        }
        let sep_len = usize::from(sep.len);
        // Lines are copied in whole blocks, past their end: what follows overwrites that. The
        // usual lengths (up to 128) with as many block copies written out.
        let made = match len.div_ceil(BLOCK) {
            1 => lines::<TEXT, 1>(c, input, len, sep, simd),
            2 => lines::<TEXT, 2>(c, input, len, sep, simd),
            3 => lines::<TEXT, 3>(c, input, len, sep, simd),
            4 => lines::<TEXT, 4>(c, input, len, sep, simd),
            _ => lines::<TEXT, 0>(c, input, len, sep, simd),
        };
        let lines = (made.i - c.i) / (len + sep_len);
        if lines > 0 {
            c.extra += lines * (sep_len - usize::from(sep.chars));
            c.trailing = usize::from(sep.chars);
        }
        c.unchecked |= made.n > c.n;
        (c.i, c.n, c.t) = (made.i, made.n, made.t);
        c.checked += made.checked;
        let full = made.full;
        if !full {
            // Not the next line's place: find it again.
            self.striding = false;
        }
        full
    }

    /// Takes the whitespace at `c.i` and all that follows it, and notes the line it ends.
    #[inline(always)]
    fn separator<const TEXT: bool>(&mut self, c: &mut Cursor<'_, TEXT>, input: &[u8]) {
        let start = c.i;
        let mut sep = Separator::default();
        let mut chars = 0;
        let mut fits = true;
        let aligned = (c.group + c.n).is_multiple_of(4);
        while c.t < TEXT_CAP {
            let Item::Space(xml, len) = item(&input[c.i..]) else {
                break;
            };
            if TEXT && aligned {
                c.text[c.t..c.t + xml.len()].copy_from_slice(xml);
                c.t += xml.len();
                let at = usize::from(sep.text_len);
                match sep.text.get_mut(at..at + xml.len()) {
                    Some(place) => {
                        place.copy_from_slice(xml);
                        sep.text_len += xml.len() as u8;
                    }
                    None => fits = false,
                }
            }
            c.i += len;
            chars += 1;
        }
        let bytes = &input[start..c.i];
        c.extra += bytes.len() - chars;
        c.trailing += chars;
        if fits && bytes.len() <= 8 {
            let mut word = [0; 8];
            word[..bytes.len()].copy_from_slice(bytes);
            sep.word = u64::from_le_bytes(word);
            sep.len = bytes.len() as u8;
            sep.chars = chars as u8;
        }
        let line = if c.clean { c.line } else { 0 };
        if sep.len > 0
            && (MIN_LINE..=MAX_LINE).contains(&line)
            && line == self.last_line
            && sep == self.last_separator
        {
            self.striding = true;
        }
        self.last_line = line;
        self.last_separator = sep;
        c.line = 0;
        c.clean = true;
    }
}

/// [`Compactor::run`] with AVX2, or AVX-512 when `wide`.
#[cfg(target_arch = "x86_64")]
struct Run<'r, 'c, const TEXT: bool> {
    compactor: &'r mut Compactor,
    c: &'r mut Cursor<'c, TEXT>,
    input: &'r [u8],
    wide: Option<Avx512>,
}

#[cfg(target_arch = "x86_64")]
impl<const TEXT: bool> crate::simd::Vectorized for Run<'_, '_, TEXT> {
    type Output = bool;

    #[inline(always)]
    fn run(self, simd: Avx2) -> bool {
        self.compactor
            .run::<TEXT, true>(self.c, self.input, Some(simd), self.wide)
    }
}

/// Where the SIMD steps left off (only `Short` elsewhere than on x86-64).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Fast {
    /// At something they do not take, for the portable way to look at.
    AtMark,
    /// The buffers are full or the input too short for another step, after some progress.
    Again,
    /// Too near the end of the input for a step: nothing taken.
    Short,
}

#[cfg(target_arch = "x86_64")]
impl Fast {
    /// Where steps that stopped `at_mark` or not, and `took` something or not, left off.
    fn after(at_mark: bool, took: bool) -> Self {
        match (at_mark, took) {
            (true, _) => Fast::AtMark,
            (false, true) => Fast::Again,
            (false, false) => Fast::Short,
        }
    }
}

/// A SIMD step that makes a block with escapes of symbols into symbols (`avx2.rs`,
/// `avx512.rs`).
#[cfg(target_arch = "x86_64")]
trait Step: Copy {
    /// Bytes of the block one step takes.
    const STEP: usize;
    /// Bytes it looks at: the block, and the rest of an escape that starts at its end.
    const WINDOW: usize;
    /// Whether, asked to check (`CHECK`), it stops at any byte outside the alphabet: all the
    /// symbols it makes are then checked.
    const CHECKS: bool;
    /// What a block holds, as far as it does not wait for the block before.
    type Found: Copy;
    /// What one step made of a block.
    type Made: Made;

    /// The AVX2 that comes with it.
    fn avx2(self) -> Avx2;

    /// Finds the escapes of the block at the start of `window` ([`Self::WINDOW`] bytes): with
    /// `CODES` `\u` escapes and `\/`, else `\/` only. With `CHECK`, a step that
    /// [`Self::CHECKS`] stops at any byte outside the alphabet too.
    fn find<const CODES: bool, const CHECK: bool>(self, window: &[u8]) -> Self::Found;

    /// Makes a block found into symbols, up to the first byte that is neither a symbol nor an
    /// escape of one. `carry`: the bytes at its start taken with the last block's escape, one
    /// bit each.
    fn make(self, found: Self::Found, carry: u64) -> Self::Made;

    /// [`Self::find`], then [`Self::make`].
    #[inline(always)]
    fn unescape<const CODES: bool, const CHECK: bool>(
        self,
        window: &[u8],
        carry: u64,
    ) -> Self::Made {
        self.make(self.find::<CODES, CHECK>(window), carry)
    }
}

/// What a [`Step`] made of a block.
#[cfg(target_arch = "x86_64")]
trait Made {
    /// Writes the symbols made at `at` in `buffer`, and up to a block past them.
    fn place(&self, buffer: &mut [u8], at: usize);
    /// How many, and where the step stopped.
    fn tally(&self) -> Tally;
}

/// What a [`Step`] made of a block, and where it stopped; masks have one bit for each byte
/// of the block.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
struct Tally {
    /// The bytes kept as symbols, past the stop too (nothing there is taken).
    kept: u64,
    /// Where something stands that the step does not take: the lowest bit set (0 for
    /// nothing).
    stop: u64,
    /// The bytes at the start of the next block that belong to an escape taken here (0 to
    /// 5), when nothing stops the step.
    carry: u64,
}

#[cfg(target_arch = "x86_64")]
impl Tally {
    /// Symbols made: those kept below the stop.
    #[inline(always)]
    fn made(&self) -> usize {
        (self.kept & self.stop.wrapping_sub(1) & !self.stop).count_ones() as usize
    }
}

/// Where [`Compactor::compact`] is, and what it has made.
struct Cursor<'a, const TEXT: bool> {
    symbols: &'a mut [u8],
    text: &'a mut [u8],
    /// Symbols in the current group of four before the first made here.
    group: usize,
    /// Input taken.
    i: usize,
    /// Symbols made.
    n: usize,
    /// Symbols checked and written as text only (whole groups).
    checked: usize,
    /// Text made.
    t: usize,
    /// Input bytes past the first of each escape and separator character.
    extra: usize,
    /// Characters since the last symbol.
    trailing: usize,
    /// Bytes of the current line so far.
    line: usize,
    /// The current line holds raw symbols only.
    clean: bool,
    /// A `\u` escape of a symbol was seen.
    codes: bool,
    /// Some symbols made were not checked against the alphabet (or failed the check).
    unchecked: bool,
    /// The blocks of raw symbols checked as they were taken.
    check: Check,
}

impl<const TEXT: bool> Cursor<'_, TEXT> {
    /// Stores a block of input where the next symbols (and text) go, without taking it.
    #[inline(always)]
    fn store(&mut self, block: &[u8; BLOCK]) {
        self.symbols[self.n..self.n + BLOCK].copy_from_slice(block);
        if TEXT {
            self.text[self.t..self.t + BLOCK].copy_from_slice(block);
        }
    }

    /// Copies raw symbols where the next go, without taking them (or checking them).
    #[inline(always)]
    fn copy(&mut self, raw: &[u8]) {
        self.unchecked |= !raw.is_empty();
        self.symbols[self.n..self.n + raw.len()].copy_from_slice(raw);
        if TEXT {
            self.text[self.t..self.t + raw.len()].copy_from_slice(raw);
        }
    }

    /// Takes `k` raw symbols, stored already.
    #[inline(always)]
    fn advance(&mut self, k: usize) {
        self.n += k;
        if TEXT {
            self.t += k;
        }
        self.i += k;
        self.line += k;
        if k > 0 {
            self.trailing = 0;
        }
    }

    /// Takes blocks with the SIMD steps of `simd` (AVX2 or AVX-512) while they hold only
    /// symbols and their escapes.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn unescape<S: Step>(&mut self, simd: S, input: &[u8]) -> Fast {
        if self.codes {
            self.unescape_as::<S, true>(simd, input)
        } else {
            self.unescape_as::<S, false>(simd, input)
        }
    }

    /// [`Self::unescape`]: with `CODES`, the steps take `\u` escapes too (a step that does
    /// not look for them is quicker while none came).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn unescape_as<S: Step, const CODES: bool>(&mut self, simd: S, input: &[u8]) -> Fast {
        // Locals: the stores of symbols could otherwise be writing to the cursor.
        let (start, mut n, mut t) = (self.i, self.n, self.t);
        let symbols = &mut *self.symbols;
        let text = &mut *self.text;
        // In text mode, a step that checks the symbols it makes writes them into the text
        // only (`m` of them), as checked whole groups; but for those that close the open
        // group and those of a last group not whole, copied into the symbols after the loop.
        let text_only = TEXT && S::CHECKS;
        let (mut carry, mut at_mark, mut m) = (0, false, 0);
        // With the buffers' lengths known, the loop's stores need no checks.
        let (Some(fixed_symbols), Some(fixed_text)) = (
            symbols.get_mut(..SYMBOLS_CAP + SLACK),
            text.get_mut(..if TEXT { TEXT_CAP + SLACK } else { 0 }),
        ) else {
            return Fast::Short;
        };
        let mut rest = &input[start..];
        while n + m < SYMBOLS_CAP && t < TEXT_CAP {
            let Some(window) = rest.get(..S::WINDOW) else {
                break;
            };
            prefetch(Some(simd.avx2()), rest, 0);
            let step = simd.unescape::<CODES, TEXT>(window, carry);
            let tally = step.tally();
            if !text_only {
                step.place(fixed_symbols, n);
            }
            if TEXT {
                step.place(fixed_text, t);
            }
            let stop = tally.stop != 0;
            // Without a stop, all the block's kept bytes are symbols made.
            let made = if stop {
                tally.made()
            } else {
                tally.kept.count_ones() as usize
            };
            if text_only {
                m += made;
            } else {
                n += made;
            }
            if TEXT {
                t += made;
            }
            if stop {
                rest = &rest[tally.stop.trailing_zeros() as usize..];
                (carry, at_mark) = (0, true);
                break;
            }
            carry = tally.carry;
            rest = &rest[S::STEP..];
        }
        let mut i = input.len() - rest.len();
        // Every symbol made, into the symbols or as checked groups.
        let made = n - self.n + m;
        if m > 0 {
            let open = (4 - (self.group + self.n + self.checked) % 4) % 4;
            let head = open.min(m);
            let tail = (m - head) % 4;
            symbols[n..n + head].copy_from_slice(&text[self.t..self.t + head]);
            symbols[n + head..n + head + tail].copy_from_slice(&text[t - tail..t]);
            n += head + tail;
            self.checked += m - head - tail;
        }
        // The rest of an escape that the last block ended in.
        i += carry.count_ones() as usize;
        // Each byte taken is a symbol made or a byte of an escape past its first.
        let extra = self.extra + (i - start) - made;
        self.unchecked |= n > self.n && !text_only;
        self.took(i, n, t, extra, made);
        Fast::after(at_mark, i > start)
    }

    /// Takes blocks of raw symbols and the escapes of symbols between them (`\/`, `\u00XX`),
    /// one escape at a time: the block after each is stored again where it now goes. Stops
    /// at anything else (true), when the buffers are full, or less than a block is left.
    #[inline(always)]
    fn escaped(&mut self, input: &[u8]) -> bool {
        // Locals: the stores of symbols could otherwise be writing to the cursor.
        let (mut i, mut n, mut t, mut extra) = (self.i, self.n, self.t, self.extra);
        let mut codes = false;
        let symbols = &mut *self.symbols;
        let text = &mut *self.text;
        let at_mark = loop {
            if n >= SYMBOLS_CAP || t >= TEXT_CAP {
                break false;
            }
            let Some(block) = input.get(i..i + BLOCK) else {
                break false;
            };
            let block: &[u8; BLOCK] = block.try_into().unwrap_or(&[0; BLOCK]);
            symbols[n..n + BLOCK].copy_from_slice(block);
            if TEXT {
                text[t..t + BLOCK].copy_from_slice(block);
            }
            let found = marks(*block);
            let k = if found == 0 {
                BLOCK
            } else {
                found.trailing_zeros() as usize
            };
            (i, n) = (i + k, n + k);
            if TEXT {
                t += k;
            }
            if found == 0 {
                continue;
            }
            // The escape as one word: `\u00` and its two digits, or `\/`.
            let Some(word) = input.get(i..i + 8) else {
                break true;
            };
            let word = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
            let (symbol, len) = if word & 0xFFFF_FFFF == U00 {
                let code =
                    (HEX[(word >> 32) as u8 as usize] << 4) | HEX[(word >> 40) as u8 as usize];
                // Only a symbol's code is taken here: an invalid digit makes no symbol's.
                if !IS_SYMBOL_CODE[usize::from(code)] {
                    break true;
                }
                (code, 6)
            } else if word & 0xFFFF == ESCAPED_SLASH {
                (b'/', 2)
            } else {
                break true;
            };
            symbols[n] = symbol;
            n += 1;
            if TEXT {
                text[t] = symbol;
                t += 1;
            }
            i += len;
            extra += len - 1;
            codes |= len == 6;
        };
        self.codes |= codes;
        self.unchecked |= n > self.n;
        self.took(i, n, t, extra, n - self.n);
        at_mark
    }

    /// Moves the cursor on to what a loop over locals took: the input to `i`, the symbols to
    /// `n`, the text to `t`, `extra` bytes past the first of each escape; `made` symbols in
    /// all (some of them perhaps counted as checked).
    #[inline(always)]
    fn took(&mut self, i: usize, n: usize, t: usize, extra: usize, made: usize) {
        // An escape: the line is no longer one to copy whole (its length no longer matters).
        if extra > self.extra {
            self.clean = false;
        }
        if i > self.i {
            self.trailing = 0;
        }
        self.line += made;
        (self.i, self.n, self.t, self.extra) = (i, n, t, extra);
    }

    /// Takes an escape of `len` bytes that stands for `symbol`.
    #[inline(always)]
    fn symbol(&mut self, symbol: u8, len: usize) {
        self.symbols[self.n] = symbol;
        self.n += 1;
        if TEXT {
            self.text[self.t] = symbol;
            self.t += 1;
        }
        self.i += len;
        self.extra += len - 1;
        self.trailing = 0;
        self.clean = false;
        self.codes |= len == 6;
    }
}

/// Where [`lines`] got to.
struct Lines {
    /// Input taken.
    i: usize,
    /// Symbols made into the symbols buffer.
    n: usize,
    /// Symbols checked and written as text only.
    checked: usize,
    /// Text made.
    t: usize,
    /// The buffers are full.
    full: bool,
}

/// Copies the lines of `len` bytes at `c.i` that end with `sep`, each in `BLOCKS` blocks (0:
/// as many as it takes), until the buffers are full or a line does not end so: natively into
/// the symbols; with `TEXT` into the text only, each line checked against the alphabet as it
/// is copied (a line that fails is left for the general way).
///
/// The input is taken as lines with their separators and the output as lines, so that the
/// copies need no bounds check of their own.
#[inline(always)]
fn lines<const TEXT: bool, const BLOCKS: usize>(
    c: &mut Cursor<'_, TEXT>,
    input: &[u8],
    len: usize,
    sep: Separator,
    simd: Option<Avx2>,
) -> Lines {
    let (sep_len, sep_text_len) = (usize::from(sep.len), usize::from(sep.text_len));
    let step = len + sep_len;
    // The separator in the last bytes of a line and its separator (a line has at least 16).
    let sep_shift = 8 * (8 - sep_len as u32);
    let (i, n, t) = (c.i, c.n, c.t);
    // Lines the buffers take: one more once past their caps.
    let (room, out, at, out_step) = if TEXT {
        let text_step = len + sep_text_len;
        let room = TEXT_CAP.saturating_sub(t).div_ceil(text_step);
        (room, &mut *c.text, t, text_step)
    } else {
        let room = SYMBOLS_CAP.saturating_sub(n).div_ceil(len);
        (room, &mut *c.symbols, n, len)
    };
    let count = room.min((input.len() - i) / step);
    let from = input[i..i + count * step].chunks_exact(step);
    // Whether a line and its separator are one to copy: the padded last line goes the
    // general way.
    let like_the_others = |line: &[u8]| {
        let end = line.get(step - 8..).unwrap_or(&[0; 8]);
        let end = u64::from_le_bytes(end.try_into().unwrap_or([0; 8]));
        end >> sep_shift == sep.word && line[len - 1] != b'='
    };
    let mut done = 0;
    if TEXT {
        // Room past the last line for its separator's whole text.
        let Some(to) = out.get_mut(at..at + count * out_step + sep.text.len()) else {
            return Lines {
                i,
                n,
                checked: 0,
                t,
                full: false,
            };
        };
        for line in from {
            prefetch(simd, input, i + done * step);
            let o = done * out_step;
            let Some(place) = to.get_mut(o..o + len + sep.text.len()) else {
                break;
            };
            if !like_the_others(line) {
                break;
            }
            let (place, after) = place.split_at_mut(len);
            let mut check = Check::new(simd);
            copy_blocks::<BLOCKS>(&line[..len], place, &mut check);
            if !check.passed() {
                break;
            }
            after.copy_from_slice(&sep.text);
            done += 1;
        }
    } else {
        let to = out[at..at + count * len].chunks_exact_mut(len);
        for (line, place) in from.zip(to) {
            prefetch(simd, input, i + done * step);
            if !like_the_others(line) {
                break;
            }
            copy_blocks::<BLOCKS>(&line[..len], place, &mut ());
            done += 1;
        }
    }
    Lines {
        i: i + done * step,
        n: if TEXT { n } else { n + done * len },
        checked: if TEXT { done * len } else { 0 },
        t: if TEXT { t + done * out_step } else { t },
        full: done == count && count == room,
    }
}

/// How far ahead of the bytes being copied the input is asked for: copying lines and taking
/// blocks run few instructions per byte, and waited for the input without it.
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 2048;

/// Asks for the input 2 KiB after `at` to be brought into the cache, with AVX2's token (only
/// a hint: nothing is read, and past the end of `input` nothing happens).
#[inline(always)]
fn prefetch(simd: Option<Avx2>, input: &[u8], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(simd) = simd {
        let ahead = input.as_ptr().wrapping_add(at + PREFETCH);
        simd.v3()
            .sse
            ._mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(ahead.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (simd, input, at);
}

/// What [`copy_blocks`] does with each block it copies: nothing, or checks it against the
/// alphabet.
trait OnBlock {
    fn block(&mut self, block: [u8; BLOCK]);
}

impl OnBlock for () {
    #[inline(always)]
    fn block(&mut self, _: [u8; BLOCK]) {}
}

impl OnBlock for Check {
    #[inline(always)]
    fn block(&mut self, block: [u8; BLOCK]) {
        Check::block(self, block);
    }
}

/// Copies `src` to `dst`, of the same length: in `BLOCKS` blocks of 32 bytes (0: as many as it
/// takes), the last one ending where they end, when they are at least a block long; each block
/// goes to `on` too. Shorter ones are copied and seen whole, padded with `A`.
#[inline(always)]
fn copy_blocks<const BLOCKS: usize>(src: &[u8], dst: &mut [u8], on: &mut impl OnBlock) {
    let len = src.len();
    let blocks = if BLOCKS > 0 {
        BLOCKS
    } else {
        len.div_ceil(BLOCK)
    };
    if len < BLOCK || dst.len() != len {
        dst.copy_from_slice(src);
        let mut block = [b'A'; BLOCK];
        if let Some(start) = block.get_mut(..len) {
            start.copy_from_slice(src);
        }
        on.block(block);
        return;
    }
    // Block by block: as one copy, it became a call.
    for b in 0..blocks {
        let at = (b * BLOCK).min(len - BLOCK);
        let (Some(from), Some(to)) = (src.get(at..at + BLOCK), dst.get_mut(at..at + BLOCK)) else {
            return;
        };
        let block: [u8; BLOCK] = from.try_into().unwrap_or([0; BLOCK]);
        to.copy_from_slice(&block);
        on.block(block);
    }
}

/// What the byte at the start of `input` (one that [`marks`] flags, or none) stands for.
#[inline(always)]
fn item(input: &[u8]) -> Item {
    match *input {
        [b' ', ..] => Item::Space(b" ", 1),
        [b'\\', b'/', ..] => Item::Symbol(b'/', 2),
        [b'\\', b'n', ..] => Item::Space(b"&#10;", 2),
        [b'\\', b'r', ..] => Item::Space(b"&#13;", 2),
        [b'\\', b't', ..] => Item::Space(b"&#9;", 2),
        [b'\\', b'u', a, b, c, d, ..] => match ascii_code([a, b, c, d]) {
            Some(b' ') => Item::Space(b" ", 6),
            Some(b'\n') => Item::Space(b"&#10;", 6),
            Some(b'\r') => Item::Space(b"&#13;", 6),
            Some(b'\t') => Item::Space(b"&#9;", 6),
            Some(symbol @ (b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/')) => {
                Item::Symbol(symbol, 6)
            }
            _ => Item::Stop,
        },
        _ => Item::Stop,
    }
}

/// The ASCII character that the four hex digits of a `\\u` escape stand for, if any: a table
/// for the usual `00XX`, the general way for anything else.
#[inline(always)]
fn ascii_code(digits: [u8; 4]) -> Option<u8> {
    match digits {
        [b'0', b'0', hi, lo] => {
            let (hi, lo) = (HEX[usize::from(hi)], HEX[usize::from(lo)]);
            ((hi | lo) < 16).then_some((hi << 4) | lo)
        }
        _ => hex4(digits).and_then(|cp| u8::try_from(cp).ok()),
    }
}

/// `\u00`, the start of the escapes of ASCII characters, as a little-endian word.
const U00: u64 = u32::from_le_bytes(*b"\\u00") as u64;

/// `\/` as a little-endian word.
const ESCAPED_SLASH: u64 = u16::from_le_bytes(*b"\\/") as u64;

/// Whether a code made of two [`HEX`] values is a base64 symbol (not `=`). A digit that is
/// not one (0xFF) sets the high half of the code, which is then none.
static IS_SYMBOL_CODE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 128 {
        table[b] = matches!(b as u8, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/');
        b += 1;
    }
    table
};

/// Hex digit -> value; 0xFF for other bytes.
static HEX: [u8; 256] = {
    let mut table = [0xFF; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// One bit for each byte of `block` that ends a run of symbols: `"`, `\`, a space, `=`.
fn marks(block: [u8; BLOCK]) -> u32 {
    let x = u8x32::new(block);
    (x.simd_eq(u8x32::splat(b'"'))
        | x.simd_eq(u8x32::splat(b'\\'))
        | x.simd_eq(u8x32::splat(b' '))
        | x.simd_eq(u8x32::splat(b'=')))
    .to_bitmask()
}

/// Whether [`marks`] flags `b`.
fn is_mark(b: u8) -> bool {
    matches!(b, b'"' | b'\\' | b' ' | b'=')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    /// One character of content as the general path reads it: where it starts, its length in
    /// bytes, the symbol it is (any raw byte but the marks counts: the decoder refuses what is
    /// not one), or else the XML text of the whitespace it is.
    type RefItem = (usize, usize, Option<u8>, &'static [u8]);

    /// The characters at the start of `input` that the compactor takes, up to the first it
    /// leaves to the general path.
    fn reference(input: &[u8]) -> Vec<RefItem> {
        let mut items = Vec::new();
        let mut i = 0;
        loop {
            let (symbol, xml, len): (Option<u8>, &'static [u8], usize) = match &input[i..] {
                [b'"' | b'=', ..] | [] => break,
                [b' ', ..] => (None, b" ", 1),
                [b'\\', b'/', ..] => (Some(b'/'), b"", 2),
                [b'\\', b'n', ..] => (None, b"&#10;", 2),
                [b'\\', b'r', ..] => (None, b"&#13;", 2),
                [b'\\', b't', ..] => (None, b"&#9;", 2),
                [b'\\', b'u', hex @ ..] if hex.len() >= 4 => {
                    let cp = std::str::from_utf8(&hex[..4])
                        .ok()
                        .and_then(|hex| u32::from_str_radix(hex, 16).ok());
                    match cp.and_then(|cp| u8::try_from(cp).ok()) {
                        Some(b' ') => (None, b" ", 6),
                        Some(b'\n') => (None, b"&#10;", 6),
                        Some(b'\r') => (None, b"&#13;", 6),
                        Some(b'\t') => (None, b"&#9;", 6),
                        Some(b) if b.is_ascii_alphanumeric() || b == b'+' || b == b'/' => {
                            (Some(b), b"", 6)
                        }
                        _ => break,
                    }
                }
                [b'\\', ..] => break,
                [b, ..] => (Some(*b), b"", 1),
            };
            items.push((i, len, symbol, xml));
            i += len;
        }
        items
    }

    /// What the compactor should make of `items`, `group` symbols into a group of four: the
    /// symbols, the text, the characters after the last symbol.
    fn expected(items: &[RefItem], group: usize) -> (Vec<u8>, Vec<u8>, u64) {
        let (mut symbols, mut text) = (Vec::new(), Vec::new());
        let mut trailing = 0;
        for &(_, _, symbol, xml) in items {
            match symbol {
                Some(symbol) => {
                    symbols.push(symbol);
                    text.push(symbol);
                    trailing = 0;
                }
                None => {
                    if (group + symbols.len()).is_multiple_of(4) {
                        text.extend_from_slice(xml);
                    }
                    trailing += 1;
                }
            }
        }
        (symbols, text, trailing)
    }

    /// Compacts `input` handed over in pieces that end at `cuts`, as the scanner does: each
    /// piece until the compactor takes nothing more of it, then the rest with the next piece.
    /// Checks each call against the reference; returns the symbols, the text and the input
    /// taken.
    fn compact_in_pieces<const TEXT: bool>(
        input: &[u8],
        cuts: &[usize],
        (simd, wide): Path,
    ) -> (Vec<u8>, Vec<u8>, usize) {
        let items = reference(input);
        let mut compactor = Compactor::new(simd, wide);
        let (mut symbols, mut text) = (Vec::new(), Vec::new());
        let (mut at, mut item) = (0, 0);
        let mut group = 0;
        for &end in cuts.iter().chain([&input.len()]) {
            let end = end.max(at);
            loop {
                let made = compactor.compact::<TEXT>(&input[at..end], group as u8);
                if made.consumed == 0 {
                    break;
                }
                // The call ends where a character does.
                let first = item;
                while item < items.len() && items[item].0 < at + made.consumed {
                    item += 1;
                }
                let end_of_items = items.get(item).map_or(at + made.consumed, |i| i.0);
                assert!(end_of_items >= at + made.consumed, "at {at}");
                let taken = &items[first..item];
                assert_eq!(
                    taken.last().map(|i| i.0 + i.1),
                    Some(at + made.consumed),
                    "at {at}"
                );
                let (expect, expect_text, trailing) = expected(taken, group);
                if made.symbols_checked {
                    let symbols = compactor.symbols(&made);
                    assert!(
                        symbols.iter().all(|&b| crate::alphabet::is_symbol(b)),
                        "said checked: {:?}",
                        String::from_utf8_lossy(symbols)
                    );
                    CHECKED_BATCHES.with(|n| n.set(n.get() + 1));
                }
                if TEXT {
                    assert_eq!(compactor.text(&made), expect_text, "at {at}");
                    assert_whole_groups_left_out(compactor.symbols(&made), &expect, group);
                    assert_eq!(made.symbols + made.checked, expect.len(), "at {at}");
                    symbols.extend_from_slice(&expect);
                } else {
                    assert_eq!(compactor.symbols(&made), expect, "at {at}");
                    assert_eq!(made.checked, 0);
                    symbols.extend_from_slice(compactor.symbols(&made));
                }
                assert_eq!(made.chars, taken.len() as u64, "at {at}");
                assert_eq!(made.trailing, trailing, "at {at}");
                text.extend_from_slice(compactor.text(&made));
                group = (group + expect.len()) % 4;
                at += made.consumed;
            }
        }
        (symbols, text, at)
    }

    thread_local! {
        /// Calls that said their symbols were checked, so that tests can see that some did.
        static CHECKED_BATCHES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// `made` is `expected` with whole groups of four left out (none of them the first
    /// `group` symbols, which close an open group), in order; and every byte left out is a
    /// symbol of the alphabet (the decoder checks only those in `made`).
    fn assert_whole_groups_left_out(made: &[u8], expected: &[u8], group: usize) {
        let open = (4 - group) % 4;
        let (made_open, made_rest) = made.split_at(open.min(made.len()));
        let (expected_open, expected_rest) = expected.split_at(open.min(expected.len()));
        assert_eq!(made_open, expected_open);
        let mut expected_groups = expected_rest.chunks(4);
        let mut left_out = Vec::new();
        for made_group in made_rest.chunks(4) {
            loop {
                let Some(g) = expected_groups.next() else {
                    panic!("{made:?} is not {expected:?} with whole groups left out");
                };
                if g == made_group {
                    break;
                }
                left_out.extend_from_slice(g);
            }
        }
        left_out.extend(expected_groups.flatten());
        assert!(
            left_out.iter().all(|&b| crate::alphabet::is_symbol(b)),
            "left out unchecked: {:?}",
            String::from_utf8_lossy(&left_out)
        );
    }

    /// The symbols a SIMD step made, in order.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn made_symbols<M: Made>(step: &M) -> Vec<u8> {
        let mut out = vec![0; 2 * 64 + 16];
        step.place(&mut out, 0);
        out.truncate(step.tally().made());
        out
    }

    /// Checks the step of `simd` on a `\u00` escape followed by every two bytes, with its
    /// backslash at each of `places` in the block (the last ones with the escape across the
    /// block's end): it takes them exactly when they are the hex code of `+` or `/` (the
    /// symbols serializers escape), with that symbol, and carries the rest of the escape into
    /// the next block; the step that does not look for codes stops at each. And `\/` at every
    /// place: its backslash is left out, its `/` kept (in the next block when the backslash
    /// ends this one).
    #[cfg(target_arch = "x86_64")]
    pub(super) fn assert_step_takes_exactly_the_escapes_of_plus_and_slash<S: Step>(
        simd: S,
        places: &[usize],
    ) {
        for at in 0..S::STEP {
            let mut window = vec![b'A'; S::WINDOW];
            window[at..at + 2].copy_from_slice(b"\\/");
            let mut expected = window[..S::STEP].to_vec();
            expected.remove(at);
            for step in [
                simd.unescape::<false, true>(&window, 0),
                simd.unescape::<true, true>(&window, 0),
            ] {
                assert_eq!(step.tally().stop, 0, "\\/ at {at}");
                assert_eq!(step.tally().carry, 0, "\\/ at {at}");
                assert_eq!(made_symbols(&step), expected, "\\/ at {at}");
            }
        }
        for (high, low) in (0..=255u8).flat_map(|high| (0..=255u8).map(move |low| (high, low))) {
            let code = std::str::from_utf8(&[high, low])
                .ok()
                .filter(|digits| digits.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|digits| u8::from_str_radix(digits, 16).ok())
                .filter(|&b| b == b'+' || b == b'/');
            for &at in places {
                let mut window = vec![b'A'; S::WINDOW];
                window[at..at + 6].copy_from_slice(&[b'\\', b'u', b'0', b'0', high, low]);
                let context = format!("\\u00{:?} at {at}", [high as char, low as char]);
                let step = simd.unescape::<false, true>(&window, 0);
                assert_eq!(step.tally().stop.trailing_zeros() as usize, at, "{context}");
                assert_eq!(made_symbols(&step), vec![b'A'; at], "{context}");
                let step = simd.unescape::<true, true>(&window, 0);
                let made = made_symbols(&step);
                match code {
                    Some(symbol) => {
                        assert_eq!(step.tally().stop, 0, "{context}");
                        let mut expected = vec![b'A'; at];
                        expected.push(symbol);
                        expected.resize(S::STEP - 5.min(S::STEP - at - 1), b'A');
                        assert_eq!(made, expected, "{context}");
                        let past = (at + 6).saturating_sub(S::STEP);
                        assert_eq!(step.tally().carry, (1 << past) - 1, "{context}");
                    }
                    None => {
                        assert_eq!(step.tally().stop.trailing_zeros() as usize, at, "{context}");
                        assert_eq!(made, vec![b'A'; at], "{context}");
                    }
                }
            }
        }
    }

    /// The SIMD a compactor is given: AVX2, and AVX-512 with its own AVX2.
    type Path = (Option<Avx2>, Option<Avx512>);

    /// Every way: the portable one, AVX2 and AVX-512 as far as the CPU has them.
    fn paths() -> Vec<Path> {
        let (simd, wide) = (Avx2::detect(), Avx512::detect());
        if wide.is_none() {
            eprintln!(
                "no AVX-512 on this CPU (AVX2: {}): not all paths",
                simd.is_some()
            );
        }
        let mut paths = vec![(None, None)];
        paths.extend(simd.map(|simd| (Some(simd), None)));
        #[cfg(target_arch = "x86_64")]
        if let Some(wide) = wide {
            paths.push((Some(wide.avx2()), Some(wide.without_vbmi())));
            if wide.vbmi().is_some() {
                paths.push((Some(wide.avx2()), Some(wide)));
            } else {
                eprintln!("no VBMI2 on this CPU: not all paths");
            }
        }
        paths
    }

    /// The symbols, text and input length of all that the compactor takes of `input`.
    fn whole(input: &[u8]) -> (Vec<u8>, Vec<u8>, usize) {
        let items = reference(input);
        let (symbols, text, _) = expected(&items, 0);
        (symbols, text, items.last().map_or(0, |i| i.0 + i.1))
    }

    /// Base64-like content: symbols in lines of `line` (0: one line) ended by `separator`,
    /// some symbols escaped (`escapes` of 64), and what follows the content.
    fn content(rng: &mut Rng, len: usize, line: usize, separator: &str, escapes: usize) -> Vec<u8> {
        const SYMBOLS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut text = Vec::new();
        for k in 0..len {
            if line > 0 && k > 0 && k % line == 0 {
                text.extend_from_slice(separator.as_bytes());
            }
            let symbol = SYMBOLS[rng.below(64)];
            if rng.below(64) < escapes {
                match rng.below(4) {
                    0 if symbol == b'/' => text.extend_from_slice(b"\\/"),
                    1 => text.extend_from_slice(format!("\\u{:04X}", symbol).as_bytes()),
                    _ => text.extend_from_slice(format!("\\u{:04x}", symbol).as_bytes()),
                }
            } else {
                text.push(symbol);
            }
        }
        text
    }

    const SEPARATORS: [&str; 7] = [" ", "\\n", "\\r\\n", "  ", "\\u000A", "\\t", " \\n"];

    /// Checks that `input` handed over in pieces that end at `cuts` makes what it makes whole
    /// (`whole`: symbols, text, input taken), by `simd` or the portable path, with or without
    /// the text.
    fn assert_pieces_agree(
        input: &[u8],
        cuts: &[usize],
        simd: Path,
        text: bool,
        whole: &(Vec<u8>, Vec<u8>, usize),
    ) {
        let (symbols, made_text, taken) = if text {
            compact_in_pieces::<true>(input, cuts, simd)
        } else {
            compact_in_pieces::<false>(input, cuts, simd)
        };
        let shown = if input.len() <= 200 {
            String::from_utf8_lossy(input).into_owned()
        } else {
            format!("{} bytes", input.len())
        };
        let context = format!(
            "{shown} cut at {cuts:?}, AVX2: {}, AVX-512: {}",
            simd.0.is_some(),
            simd.1.is_some()
        );
        assert_eq!(symbols, whole.0, "{context}");
        assert_eq!(taken, whole.2, "{context}");
        if text {
            assert_eq!(made_text, whole.1, "{context}");
        }
    }

    #[test]
    fn small_inputs_split_at_every_byte_agree_with_the_reference() {
        let mut rng = Rng(0x0063_6f6d_7061_6374);
        for case in 0..300 {
            let line = [0, 4, 16, 17, 20][case % 5];
            let separator = SEPARATORS[case % SEPARATORS.len()];
            let mut input = content(&mut rng, 40 + case % 60, line, separator, case % 3 * 8);
            // What ends it: the closing quote, padding, an escape for the general path, an
            // invalid byte (taken: the decoder refuses it), or nothing.
            let tail: &[u8] = [&b"\""[..], b"==\"", b"\\\"", b"\\b", b"!AB\"", b""][case % 6];
            input.extend_from_slice(tail);
            assert_every_cut_agrees(&input);
        }
    }

    #[test]
    fn large_wrapped_and_escaped_inputs_split_anywhere_agree_with_the_reference() {
        let mut rng = Rng(0x0077_7261_7070_6564);
        for case in 0..40 {
            let line = [76, 64, 16, 1024, 1025, 0][case % 6];
            let separator = SEPARATORS[case % SEPARATORS.len()];
            let escapes = [0, 0, 1, 4][case % 4];
            let mut input = content(&mut rng, 100_000, line, separator, escapes);
            if case % 5 == 0 {
                // A line that only looks like the others: one symbol short, a separator that
                // differs, a quote inside.
                let at = input.len() / 2;
                input.insert(at, [b' ', b'"', b'A', b'\\'][case % 4]);
            }
            input.extend_from_slice(b"QQ==\"}");
            let whole = whole(&input);
            for _ in 0..3 {
                let mut cuts: Vec<usize> = (0..20).map(|_| rng.below(input.len())).collect();
                cuts.sort_unstable();
                for simd in paths() {
                    assert_pieces_agree(&input, &cuts, simd, false, &whole);
                    assert_pieces_agree(&input, &cuts, simd, true, &whole);
                }
            }
        }
    }

    /// Cut at every byte, `input` makes what it makes whole, on each path and in each mode.
    fn assert_every_cut_agrees(input: &[u8]) {
        let whole = whole(input);
        let paths = paths();
        for cut in 0..=input.len() {
            for &simd in &paths {
                for text in [false, true] {
                    assert_pieces_agree(input, &[cut], simd, text, &whole);
                }
            }
        }
    }

    /// Content of every kind mixed at random: symbols raw and escaped every way, whitespace
    /// raw and escaped, and now and then something the compactor must leave alone (`=` and its
    /// escape, a quote, other escapes, escapes cut short or of other characters, bytes that
    /// are not base64). `dense`: one character in how many is not a raw symbol. Without
    /// `codes`, no `\u` escapes (after the first, the steps look for them too).
    fn mixed(rng: &mut Rng, len: usize, dense: usize, odd: bool, codes: bool) -> Vec<u8> {
        const SYMBOLS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        const ODD: [&[u8]; 16] = [
            b"=",
            b"\\u003d",
            b"\\u003D",
            b"\"",
            b"\\\\",
            b"\\b",
            b"\\f",
            b"\\u00G1",
            b"\\u0141",
            b"\\u002",
            b"\\u0000",
            b"\\u005C",
            b"\\U002B",
            b"\x01",
            b"\xC3\xA9",
            b"!",
        ];
        let mut text = Vec::new();
        while text.len() < len {
            let symbol = SYMBOLS[rng.below(64)];
            if odd && rng.below(200) == 0 {
                text.extend_from_slice(ODD[rng.below(ODD.len())]);
                continue;
            }
            if rng.below(dense) != 0 {
                text.push(symbol);
                continue;
            }
            match rng.below(9) {
                0..=4 if !codes => text.extend_from_slice(b"\\/"),
                0 => text.extend_from_slice(b"\\/"),
                1 => text.extend_from_slice(format!("\\u{:04X}", symbol).as_bytes()),
                2 | 3 => text.extend_from_slice(format!("\\u{:04x}", symbol).as_bytes()),
                4 => text.extend_from_slice(
                    format!("\\u00{:x}{:X}", symbol >> 4, symbol & 15).as_bytes(),
                ),
                5 => text.push(b' '),
                6 => text.extend_from_slice(b"\\n"),
                7 => text.extend_from_slice(b"\\r\\n"),
                _ if !codes => text.extend_from_slice(b"\\t"),
                _ => text.extend_from_slice([&b"\\t"[..], b"\\u000A", b"\\u0020"][rng.below(3)]),
            }
        }
        text
    }

    #[test]
    fn small_mixed_inputs_split_at_every_byte_agree_with_the_reference_both_ways() {
        let mut rng = Rng(0x6d69_7865_6421);
        for case in 0..200 {
            let dense = [2, 3, 6, 16, 64][case % 5];
            let mut input = mixed(
                &mut rng,
                30 + case % 90,
                dense,
                case % 4 == 0,
                case % 3 == 0,
            );
            input.extend_from_slice([&b"\""[..], b"QQ==\"", b"\\u003d\"", b""][case % 4]);
            assert_every_cut_agrees(&input);
        }
    }

    #[test]
    fn large_mixed_inputs_split_anywhere_agree_with_the_reference_both_ways() {
        let mut rng = Rng(0x6c61_7267_6521);
        for case in 0..24 {
            let dense = [2, 3, 6, 16, 64, 1000][case % 6];
            let mut input = mixed(&mut rng, 60_000, dense, case % 3 == 0, case % 4 == 0);
            input.extend_from_slice(b"QQ==\"}");
            let whole = whole(&input);
            for _ in 0..4 {
                let mut cuts: Vec<usize> = (0..30).map(|_| rng.below(input.len())).collect();
                cuts.sort_unstable();
                for simd in paths() {
                    assert_pieces_agree(&input, &cuts, simd, false, &whole);
                    assert_pieces_agree(&input, &cuts, simd, true, &whole);
                }
            }
        }
    }

    #[test]
    fn wrapped_lines_split_at_every_byte_agree_with_the_reference() {
        let mut rng = Rng(0x7374_7269_6465);
        // Line lengths under, at and over whole blocks, and one longer than those with a copy
        // of their own; the lines after the second are copied whole, in blocks that reach past
        // the line (and, near the end, past the input).
        for (case, line) in [76, 64, 100, 19, 32, 200].into_iter().enumerate() {
            for separator in SEPARATORS {
                let mut input = content(&mut rng, line * 5 + case * 3, line, separator, 0);
                input.extend_from_slice([&b"=\""[..], b"\\"][case % 2]);
                assert_every_cut_agrees(&input);
                // A last line as long as the others that ends with padding, and its separator
                // (Python's `encodebytes` ends so): the general path reads it.
                let mut input = content(&mut rng, line * 4, line, separator, 0);
                let padding = 1 + case % 2;
                let end = input.len();
                input[end - padding..].fill(b'=');
                input.extend_from_slice(separator.as_bytes());
                input.push(b'"');
                assert_every_cut_agrees(&input);
            }
        }
    }

    #[test]
    fn bytes_outside_the_alphabet_in_lines_copied_whole_reach_the_decoder() {
        let mut rng = Rng(0x006f_7574_7369_6465);
        // Lines of whole groups (text mode copies only those whole), the bad byte in a line
        // after the first two, where lines are copied whole.
        for line in [76, 64, 20, 100] {
            for separator in [" ", "\\n", "\\r\\n"] {
                for at in 0..line {
                    let mut input = content(&mut rng, line * 6, line, separator, 0);
                    input[3 * (line + separator.len()) + at] =
                        [b'-', b'_', b'.', b'!', 0x80, 0xFF, b'\t'][at % 7];
                    input.push(b'"');
                    let mut cuts = [rng.below(input.len()), rng.below(input.len())];
                    cuts.sort_unstable();
                    // The text-mode assertion that nothing unchecked was left out of the
                    // symbols is in `compact_in_pieces`.
                    let whole = whole(&input);
                    for path in paths() {
                        assert_pieces_agree(&input, &[], path, true, &whole);
                        assert_pieces_agree(&input, &cuts, path, true, &whole);
                    }
                }
            }
        }
    }

    #[test]
    fn symbols_said_checked_are_in_the_alphabet_with_a_byte_outside_it_anywhere() {
        let mut rng = Rng(0x0063_6865_636b);
        let outside = [b'-', b'_', b'.', b'!', 0x80, 0xFF, b'\t', 0x01];
        for escapes in [4, 16] {
            // Escaped symbols (`\/`, `\u002B`) about every 16 or 4 symbols, enough for more
            // than one batch (the last of a call is never said checked: its end goes the
            // portable way); one byte outside the alphabet at each place of two blocks of 64
            // bytes in the first batch.
            let clean = content(&mut rng, 24_000, 0, "", escapes);
            let mut inputs = vec![clean.clone()];
            for at in (4096..4096 + 130).chain([0, 1, 100, 9000]) {
                let mut input = clean.clone();
                if input[at] != b'\\' && input[at + 1] != b'\\' {
                    input[at] = outside[at % outside.len()];
                    inputs.push(input);
                }
            }
            for mut input in inputs {
                input.push(b'"');
                let whole = whole(&input);
                // `compact_in_pieces` asserts what is said checked.
                for path in paths() {
                    assert_pieces_agree(&input, &[], path, true, &whole);
                }
            }
        }
        // Where the CPU has VBMI, the clean content's first batch was said checked.
        #[cfg(target_arch = "x86_64")]
        if Avx512::detect().and_then(Avx512::vbmi).is_some() {
            assert!(CHECKED_BATCHES.with(|n| n.get()) > 0);
        }
    }

    #[test]
    fn escapes_at_every_place_in_a_block_split_at_every_byte_agree_with_the_reference() {
        // `\/` with its backslash at each place of a block and across its end; then what the
        // steps must leave to the general path where it stands: escapes that are not symbols,
        // `\u` with bad hex, a quote, or a lone backslash at the end.
        const ENDS: [&[u8]; 6] = [b"\\\\AB", b"\\\"", b"\\u00G1", b"\\u002", b"\"", b"\\"];
        for at in 0..=66 {
            let mut input = vec![b'A'; at];
            input.extend_from_slice(b"\\/");
            input.extend(b"0123456789".iter().cycle().take(40 + at % 7));
            input.extend_from_slice(b"\\/\\/");
            input.extend(b"xyz".iter().cycle().take(at % 33));
            input.extend_from_slice(ENDS[at % ENDS.len()]);
            assert_every_cut_agrees(&input);
        }
    }

    #[test]
    fn code_escapes_at_every_place_in_a_wide_block_split_at_every_byte_agree_with_the_reference() {
        // A `\u002B` first, after which the AVX-512 steps take `\u` escapes; then escapes of
        // symbols (hex in either case, and `\/`) with their backslash at each place of a
        // 64-byte block and across its end; then what the steps must leave to the general
        // path where it stands: escapes of what is no symbol (`=`, a space, a quote, a
        // backslash, a letter past ASCII), bad or cut-off hex, an escaped backslash before
        // `u0041`, a lone backslash.
        const CODES: [&[u8]; 5] = [b"\\u002B", b"\\u002f", b"\\u0041", b"\\u007a", b"\\u0030"];
        const ENDS: [&[u8]; 11] = [
            b"\\u003d",
            b"\\u0020",
            b"\\u0022",
            b"\\u005C",
            b"\\u012B",
            b"\\u00G1",
            b"\\u00:1",
            b"\\u004`",
            b"\\u002",
            b"\\\\u0041",
            b"\\",
        ];
        for at in 0..=140 {
            let mut input = b"\\u002B".to_vec();
            input.extend(b"ABCD".iter().cycle().take(at));
            input.extend_from_slice(CODES[at % CODES.len()]);
            input.extend(b"0123456789".iter().cycle().take(at % 70));
            input.extend_from_slice(CODES[(at + 1) % CODES.len()]);
            input.extend_from_slice(b"\\/");
            input.extend_from_slice(CODES[(at + 2) % CODES.len()]);
            input.extend(b"xyz".iter().cycle().take(at % 65));
            input.extend_from_slice(ENDS[at % ENDS.len()]);
            input.extend_from_slice(b"AAAA\\u002B");
            assert_every_cut_agrees(&input);
        }
    }

    #[test]
    fn buffers_stay_bounded() {
        let mut rng = Rng(0x0062_6f75_6e64);
        for (simd, wide) in paths() {
            for input in [
                content(&mut rng, 1 << 20, 76, "\\r\\n", 0),
                content(&mut rng, 1 << 20, 0, "", 32),
            ] {
                let mut compactor = Compactor::new(simd, wide);
                let mut at = 0;
                while at < input.len() {
                    let made = compactor.compact::<true>(&input[at..], 0);
                    assert!(made.consumed > 0);
                    assert!(made.symbols < SYMBOLS_CAP + SLACK && made.text < TEXT_CAP + SLACK);
                    at += made.consumed;
                }
                assert_eq!(compactor.symbols.capacity(), SYMBOLS_CAP + SLACK);
                assert_eq!(compactor.text.capacity(), TEXT_CAP + SLACK);
            }
        }
    }
}
