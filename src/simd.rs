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

/// The CPU's AVX-512 (x86-64-v4), found at run time (x86-64 only). It has AVX2 too.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(pulp::x86::V4);

/// No run-time SIMD on other architectures: the portable path only.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Avx512 {}

impl Avx512 {
    /// The CPU's AVX-512, if it has it.
    pub(crate) fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        return pulp::x86::V4::try_new().map(Self);
        #[cfg(not(target_arch = "x86_64"))]
        None
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

    /// Runs `op` compiled for AVX-512, with what it inlines.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) fn vectorize<T: Vectorized>(self, op: T) -> T::Output {
        self.0.vectorize(Call(op, self.avx2()))
    }
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
