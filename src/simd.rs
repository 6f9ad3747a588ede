//! AVX2 and AVX-512 chosen at run time: the crate is built for the x86-64 baseline, and a few
//! steps run compiled for AVX2, or for AVX-512 (x86-64-v4: F, BW, CD, DQ, VL), on CPUs that
//! have it. `pulp` hands out its token only after it has found
//! the feature, so no `unsafe` is needed here. On other architectures there is no token, and
//! the portable code runs.

/// The CPU's AVX2, found at run time (x86-64 only).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(pulp::x86::V3);

/// No run-time SIMD on other architectures: the portable path only.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Avx2 {}

impl Avx2 {
    /// The CPU's AVX2, if it has it.
    pub(crate) fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        return pulp::x86::V3::try_new().map(Self);
        #[cfg(not(target_arch = "x86_64"))]
        None
    }

    /// The intrinsics the token gives safe access to.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) fn v3(self) -> pulp::x86::V3 {
        self.0
    }

    /// Runs `op` compiled for AVX2, with what it inlines.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) fn vectorize<T: Vectorized>(self, op: T) -> T::Output {
        self.0.vectorize(Call(op, self))
    }
}

/// The CPU's AVX-512 (x86-64-v4), found at run time (x86-64 only). It has AVX2 too, and
/// VBMI and VBMI2 where the CPU has them.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(pulp::x86::V4, Option<archmage::X64V4xToken>);

/// No run-time SIMD on other architectures: the portable path only.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Avx512 {}

impl Avx512 {
    /// The CPU's AVX-512, if it has it.
    pub(crate) fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        return pulp::x86::V4::try_new().map(|v4| Self(v4, Vbmi::detect().map(|vbmi| vbmi.0)));
        #[cfg(not(target_arch = "x86_64"))]
        None
    }

    /// VBMI and VBMI2, when the CPU has them.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) fn vbmi(self) -> Option<Vbmi> {
        self.1.map(|token| Vbmi(token, self.0))
    }

    /// The same without VBMI, as on CPUs that have AVX-512 without it (for tests).
    #[cfg(all(test, target_arch = "x86_64"))]
    pub(crate) fn without_vbmi(self) -> Self {
        Self(self.0, None)
    }

    /// The intrinsics the token gives safe access to.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) fn v4(self) -> pulp::x86::V4 {
        self.0
    }

    /// The AVX2 that comes with it.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) fn avx2(self) -> Avx2 {
        Avx2(*self.0)
    }

    /// Runs `op` compiled for AVX-512 (and VBMI where the CPU has it), with what it inlines.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) fn vectorize<T: Vectorized>(self, op: T) -> T::Output {
        match self.vbmi() {
            Some(vbmi) => vbmi.vectorize(op),
            None => self.0.vectorize(Call(op, self.avx2())),
        }
    }
}

/// The CPU's AVX-512 with VBMI and VBMI2 (the byte permutes and the byte compress of Ice Lake
/// and later, and Zen 4), found at run time by `archmage`, whose `#[arcane]` functions are
/// compiled for what its token proves. It has AVX-512 (x86-64-v4) too.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Vbmi(archmage::X64V4xToken, pulp::x86::V4);

#[cfg(target_arch = "x86_64")]
impl Vbmi {
    /// The CPU's, if it has them (found once, then remembered: the decoder asks for each
    /// batch).
    pub(crate) fn detect() -> Option<Self> {
        use archmage::SimdToken as _;
        static FOUND: std::sync::OnceLock<Option<Vbmi>> = std::sync::OnceLock::new();
        *FOUND.get_or_init(|| {
            let token = archmage::X64V4xToken::summon()?;
            Some(Self(token, pulp::x86::V4::try_new()?))
        })
    }

    /// The token of `archmage`'s functions.
    #[inline(always)]
    pub(crate) fn token(self) -> archmage::X64V4xToken {
        self.0
    }

    /// The AVX-512 that comes with it.
    #[inline(always)]
    pub(crate) fn avx512(self) -> Avx512 {
        Avx512(self.1, Some(self.0))
    }

    /// Runs `op` compiled for all it has, with what it inlines (so that `archmage`'s functions
    /// inline into it).
    #[inline(always)]
    pub(crate) fn vectorize<T: Vectorized>(self, op: T) -> T::Output {
        with_vbmi(self.0, op, Avx2(*self.1))
    }
}

/// [`Vbmi::vectorize`].
#[cfg(target_arch = "x86_64")]
#[archmage::arcane]
fn with_vbmi<T: Vectorized>(_token: archmage::X64V4xToken, op: T, simd: Avx2) -> T::Output {
    op.run(simd)
}

/// Work to run compiled for AVX2 (see [`Avx2::vectorize`]).
#[cfg(target_arch = "x86_64")]
pub(crate) trait Vectorized {
    type Output;

    /// Runs it; must be `#[inline(always)]`, or it is compiled for the baseline. `simd`: the
    /// AVX2 it is compiled for (or that comes with the AVX-512).
    fn run(self, simd: Avx2) -> Self::Output;
}

/// `op` as the closure `pulp` runs with the CPU's features on. (A closure of our own would
/// not be inlined into `pulp`'s AVX2 function, and its intrinsics would stay calls.)
#[cfg(target_arch = "x86_64")]
struct Call<T>(T, Avx2);

#[cfg(target_arch = "x86_64")]
impl<T: Vectorized> pulp::NullaryFnOnce for Call<T> {
    type Output = T::Output;

    #[inline(always)]
    fn call(self) -> T::Output {
        self.0.run(self.1)
    }
}
