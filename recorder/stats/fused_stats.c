/* One pass over a contiguous float32 or bfloat16 array: everything a statistics row needs.
 *
 * Built on first use by recorder/stats/native.py (any C99 compiler) and called through ctypes;
 * see that module for why it exists.  The bits decide zero, -0.0, NaN and infinity (integer
 * tests, exact under the float flags the build uses); the values feed min, max, sum and sum of
 * squares over the finite elements.
 *
 * Sums: a block of BLOCK elements is summed in float in LANES lanes (8 terms per lane, in
 * whatever order the compiler picks), and each lane's block sum is added in double.  Summing 8
 * terms (or squares) in float errs by at most 8 * 2^-24 (4.8e-7) of their magnitudes, so the
 * result is within that of the sum of magnitudes (measured: a few 1e-8), inside the 1e-6 that
 * spec section 5.7 allows.  A lane's block sum that overflows float (|x| above about 1e19 for the
 * squares) comes back as an infinity (or the sum as a NaN); the caller then computes the row in
 * float64 instead.
 *
 * Speed: most blocks hold neither a zero nor a non-finite element and need only the sums, min
 * and max, with no per-element counts or selects.  The fast path sums a float32 block that way
 * while it tests for both (one integer test per element: with m the magnitude's bits, m - 1,
 * wrapping, is below 0x7f7fffff for all other elements), and keeps the result if neither turned
 * up; a bfloat16 run of RUN blocks is tested first, in 16-bit lanes, then summed.  Otherwise
 * block by block: a block with no non-finite element (its sum of squares comes out finite) has
 * its zeros and -0.0s counted too (zeros change nothing else); a block with one takes the general
 * code, where each element is counted on its bits and a non-finite one stands in as 0 for the
 * sums and +-FLT_MAX for min and max (what the other paths computed from a NaN or an infinity is
 * thrown away).  The next block probably resembles the last: it starts on that one's path.
 *
 * The fingerprint is tracefmt's: the wrapping sum of the bytes read as little-endian 64-bit
 * words, the last word zero-padded.  Min and max do not tell -0.0 from 0.0: `negzero` counts the
 * -0.0s, and the caller asks torch only when one of them could be the min or the max.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 128            /* a multiple of 4 * LANES: every part starts on a 64-bit word */
#define LANES 16             /* float lanes of a block's sums: BLOCK / LANES = 8 terms each */
#define RUN 4                /* bfloat16 blocks tested at once for zeros and non-finite */
#define MIN_PER_THREAD 65536 /* below this, a thread costs more than it saves */

/* Lanes the general code reads at a time: then its eight accumulators fit in the vector
 * registers (below AVX-512, 16 of 32 bytes). */
#ifdef __AVX512F__
#define GROUP 16
#else
#define GROUP 8
#endif

#ifdef __GNUC__ /* the general code is the rare path: keep it out of the fast path's loop */
#define RARE __attribute__((noinline))
#else
#define RARE
#endif

#ifdef FP_FAST_FMAF /* a fused multiply-add instruction: one rounding fewer, and faster */
#define SQUARE_ADD(v, q) fmaf((v), (v), (q))
#else
#define SQUARE_ADD(v, q) ((v) * (v) + (q))
#endif

typedef struct {
    double sum, sumsq, min, max; /* over the finite elements */
    int64_t nonzero, negzero, nan, inf;
    uint64_t fingerprint;
} tf_stats;

/* A part's running state, lane by lane (vector registers, once compiled). */
typedef struct {
    double sum[LANES], sumsq[LANES];
    float min[LANES], max[LANES];
    uint64_t words[LANES / 2];
    int64_t nonzero, negzero, nan, inf;
} tf_acc;

typedef struct {
    const void *data;
    int64_t start, stop; /* elements; start is a multiple of BLOCK */
    int bf16;
    tf_stats out;
} tf_part;

/* What a block held, so how the next one is probably best read; UNCOUNTED: the fast path found
 * a zero or a non-finite element and added nothing. */
enum { CLEAN, ZEROS, NONFINITE, UNCOUNTED };

static void init(tf_stats *s) {
    s->sum = s->sumsq = 0.0;
    s->min = FLT_MAX;
    s->max = -FLT_MAX;
    s->nonzero = s->negzero = s->nan = s->inf = 0;
    s->fingerprint = 0;
}

static void merge(tf_stats *into, const tf_stats *s) {
    into->sum += s->sum;
    into->sumsq += s->sumsq;
    into->min = s->min < into->min ? s->min : into->min;
    into->max = s->max > into->max ? s->max : into->max;
    into->nonzero += s->nonzero;
    into->negzero += s->negzero;
    into->nan += s->nan;
    into->inf += s->inf;
    into->fingerprint += s->fingerprint;
}

static void acc_init(tf_acc *a) {
    for (int k = 0; k < LANES; ++k) {
        a->sum[k] = a->sumsq[k] = 0.0;
        a->min[k] = FLT_MAX;
        a->max[k] = -FLT_MAX;
    }
    for (int k = 0; k < LANES / 2; ++k)
        a->words[k] = 0;
    a->nonzero = a->negzero = a->nan = a->inf = 0;
}

static void acc_finish(const tf_acc *a, tf_stats *s) {
    float mn = FLT_MAX, mx = -FLT_MAX;
    for (int k = 0; k < LANES; ++k) {
        s->sum += a->sum[k];
        s->sumsq += a->sumsq[k];
        mn = a->min[k] < mn ? a->min[k] : mn;
        mx = a->max[k] > mx ? a->max[k] : mx;
    }
    for (int k = 0; k < LANES / 2; ++k)
        s->fingerprint += a->words[k];
    s->min = mn;
    s->max = mx;
    s->nonzero += a->nonzero;
    s->negzero += a->negzero;
    s->nan += a->nan;
    s->inf += a->inf;
}

/* The fingerprint's words in `bytes` bytes (a multiple of 4 * LANES). */
static inline void add_words(const void *data, int bytes, tf_acc *a) {
    const unsigned char *p = (const unsigned char *)data;
    for (int j = 0; j < bytes; j += 4 * LANES)
        for (int k = 0; k < LANES / 2; ++k) {
            uint64_t w;
            memcpy(&w, p + j + 8 * k, sizeof w);
            a->words[k] += w;
        }
}

/* Whether a lane of a block's sum of squares is an infinity or a NaN (on the bits: the float
 * flags let the compiler assume there is none). */
static inline int any_nonfinite(const float *q) {
    uint32_t most = 0;
    for (int k = 0; k < LANES; ++k) {
        uint32_t b;
        memcpy(&b, &q[k], sizeof b);
        b &= 0x7fffffffu;
        most = b > most ? b : most;
    }
    return most >= 0x7f800000u;
}

/* A block's lanes. */
typedef struct {
    float s[LANES], q[LANES], lo[LANES], hi[LANES];
    uint32_t zero[LANES], negzero[LANES], nan[LANES], inf[LANES];
} tf_block;

static inline void block_init(tf_block *t) {
    for (int k = 0; k < LANES; ++k) {
        t->s[k] = t->q[k] = 0.0f;
        t->lo[k] = FLT_MAX;
        t->hi[k] = -FLT_MAX;
        t->zero[k] = t->negzero[k] = t->nan[k] = t->inf[k] = 0;
    }
}

/* A finite element (float32 bits b) into lane k, and its counts if `count`. */
static inline void finite_element(tf_block *t, int k, uint32_t b, int count) {
    float v;
    memcpy(&v, &b, sizeof v);
    t->s[k] += v;
    t->q[k] = SQUARE_ADD(v, t->q[k]);
    t->lo[k] = v < t->lo[k] ? v : t->lo[k];
    t->hi[k] = v > t->hi[k] ? v : t->hi[k];
    if (count) {
        t->zero[k] += (b & 0x7fffffffu) == 0;
        t->negzero[k] += b == 0x80000000u;
    }
}

/* Any element (float32 bits b) into lane k: counts, and its value in the lane's min, max and
 * sums, a non-finite one as 0 and +-FLT_MAX. */
static inline void element(tf_block *t, int k, uint32_t b) {
    uint32_t mag = b & 0x7fffffffu;
    int finite = mag < 0x7f800000u;
    uint32_t bv = finite ? b : 0u, blo = finite ? b : 0x7f7fffffu, bhi = finite ? b : 0xff7fffffu;
    float v, lo, hi;
    memcpy(&v, &bv, sizeof v);
    memcpy(&lo, &blo, sizeof lo);
    memcpy(&hi, &bhi, sizeof hi);
    t->zero[k] += mag == 0;
    t->negzero[k] += b == 0x80000000u;
    t->nan[k] += mag > 0x7f800000u;
    t->inf[k] += mag == 0x7f800000u;
    t->s[k] += v;
    t->q[k] = SQUARE_ADD(v, t->q[k]);
    t->lo[k] = lo < t->lo[k] ? lo : t->lo[k];
    t->hi[k] = hi > t->hi[k] ? hi : t->hi[k];
}

/* The lanes and counts of n elements into the part's: what they held (NONFINITE, ZEROS or
 * CLEAN). */
static inline int block_add(tf_acc *a, const tf_block *t, int n) {
    uint32_t z = 0, nz = 0, na = 0, in = 0;
    for (int k = 0; k < LANES; ++k) {
        z += t->zero[k];
        nz += t->negzero[k];
        na += t->nan[k];
        in += t->inf[k];
    }
    for (int k = 0; k < LANES; ++k) {
        a->sum[k] += t->s[k]; /* float into double */
        a->sumsq[k] += t->q[k];
        a->min[k] = t->lo[k] < a->min[k] ? t->lo[k] : a->min[k];
        a->max[k] = t->hi[k] > a->max[k] ? t->hi[k] : a->max[k];
    }
    a->nonzero += n - z;
    a->negzero += nz;
    a->nan += na;
    a->inf += in;
    return na + in ? NONFINITE : z ? ZEROS : CLEAN;
}

/* float32 ---------------------------------------------------------------------------------- */

/* A block as if all its elements were finite.  With `count`, its zeros are counted, and a block
 * with a non-finite element adds nothing and says NONFINITE; without, a block with either adds
 * nothing and says UNCOUNTED. */
static inline int finite_f32(const uint32_t *p, tf_acc *a, int count) {
    tf_block t;
    block_init(&t);
    uint32_t most[LANES];
    for (int k = 0; k < LANES; ++k)
        most[k] = 0;
    for (int j = 0; j < BLOCK; j += LANES)
        for (int k = 0; k < LANES; ++k) {
            uint32_t b = p[j + k];
            finite_element(&t, k, b, count);
            if (!count) {
                uint32_t m = (b & 0x7fffffffu) - 1u;
                most[k] = m > most[k] ? m : most[k];
            }
        }
    if (count && any_nonfinite(t.q))
        return NONFINITE;
    if (!count) {
        uint32_t m = 0;
        for (int k = 0; k < LANES; ++k)
            m = most[k] > m ? most[k] : m;
        if (m >= 0x7f7fffffu)
            return UNCOUNTED;
    }
    return block_add(a, &t, BLOCK);
}

/* n elements (at most BLOCK, a multiple of LANES), any at all. */
RARE static int general_f32(const uint32_t *p, int n, tf_acc *a) {
    tf_block t;
    block_init(&t);
    for (int g = 0; g < LANES; g += GROUP)
        for (int j = 0; j < n; j += LANES)
            for (int k = g; k < g + GROUP; ++k)
                element(&t, k, p[j + k]);
    return block_add(a, &t, n);
}

static void run_f32(const uint32_t *bits, int64_t start, int64_t stop, tf_stats *s) {
    tf_acc a;
    acc_init(&a);
    int64_t i = start;
    int state = CLEAN; /* the last block's */
    while (i + BLOCK <= stop) {
        const uint32_t *p = bits + i;
        add_words(p, 4 * BLOCK, &a);
        if (state == CLEAN)
            state = finite_f32(p, &a, 0);
        if (state == UNCOUNTED || state == ZEROS)
            state = finite_f32(p, &a, 1);
        if (state == NONFINITE)
            state = general_f32(p, BLOCK, &a);
        i += BLOCK;
    }
    if (i < stop) { /* the tail (last part only), padded with NaNs that are not counted */
        uint32_t tail[BLOCK];
        int n = (int)(stop - i), padded = (n + LANES - 1) / LANES * LANES;
        memcpy(tail, bits + i, (size_t)n * sizeof *tail);
        for (int j = n; j < padded; ++j)
            tail[j] = 0x7fc00000u;
        general_f32(tail, padded, &a);
        a.nan -= padded - n;
        a.nonzero -= padded - n;
    }
    for (; i < stop; ++i)
        s->fingerprint += (uint64_t)bits[i] << (32 * (i & 1));
    acc_finish(&a, s);
}

/* bfloat16: the same, but a 32-bit word w holds two elements, whose float32 bits are w << 16
 * (the first) and w & 0xffff0000 (the second); both go to the word's lane. ----------------- */

/* Whether n elements (a multiple of 2 * LANES) hold neither a zero nor a non-finite element. */
static inline int plain_bf16(const uint16_t *p, int n) {
    uint16_t most[2 * LANES];
    for (int k = 0; k < 2 * LANES; ++k)
        most[k] = 0;
    for (int j = 0; j < n; j += 2 * LANES)
        for (int k = 0; k < 2 * LANES; ++k) {
            uint16_t m = (uint16_t)((p[j + k] & 0x7fffu) - 1u);
            most[k] = m > most[k] ? m : most[k];
        }
    uint16_t m = 0;
    for (int k = 0; k < 2 * LANES; ++k)
        m = most[k] > m ? most[k] : m;
    return m < 0x7f7fu;
}

/* A block as if all its elements were finite; with `count` as finite_f32, without it the caller
 * knows that they are, and nonzero. */
static inline int finite_bf16(const uint16_t *p, tf_acc *a, int count) {
    tf_block t;
    block_init(&t);
    for (int j = 0; j < BLOCK; j += 2 * LANES)
        for (int k = 0; k < LANES; ++k) {
            uint32_t w;
            memcpy(&w, p + j + 2 * k, sizeof w);
            finite_element(&t, k, w << 16, count);
            finite_element(&t, k, w & 0xffff0000u, count);
        }
    if (count && any_nonfinite(t.q))
        return NONFINITE;
    return block_add(a, &t, BLOCK);
}

/* n elements (at most BLOCK, a multiple of 2 * LANES), any at all. */
RARE static int general_bf16(const uint16_t *p, int n, tf_acc *a) {
    tf_block t;
    block_init(&t);
    for (int g = 0; g < LANES; g += GROUP)
        for (int j = 0; j < n; j += 2 * LANES)
            for (int k = g; k < g + GROUP; ++k) {
                uint32_t w;
                memcpy(&w, p + j + 2 * k, sizeof w);
                element(&t, k, w << 16);
                element(&t, k, w & 0xffff0000u);
            }
    return block_add(a, &t, n);
}

static void run_bf16(const uint16_t *bits, int64_t start, int64_t stop, tf_stats *s) {
    tf_acc a;
    acc_init(&a);
    int64_t i = start;
    int state = CLEAN;
    while (i + BLOCK <= stop) {
        const uint16_t *p = bits + i;
        if (state == CLEAN && i + RUN * BLOCK <= stop && plain_bf16(p, RUN * BLOCK)) {
            add_words(p, 2 * RUN * BLOCK, &a);
            for (int b = 0; b < RUN; ++b)
                finite_bf16(p + b * BLOCK, &a, 0);
            i += RUN * BLOCK;
            continue;
        }
        add_words(p, 2 * BLOCK, &a);
        if (state == NONFINITE || (state = finite_bf16(p, &a, 1)) == NONFINITE)
            state = general_bf16(p, BLOCK, &a);
        i += BLOCK;
    }
    if (i < stop) {
        uint16_t tail[BLOCK];
        int n = (int)(stop - i), padded = (n + 2 * LANES - 1) / (2 * LANES) * (2 * LANES);
        memcpy(tail, bits + i, (size_t)n * sizeof *tail);
        for (int j = n; j < padded; ++j)
            tail[j] = 0x7fc0u;
        general_bf16(tail, padded, &a);
        a.nan -= padded - n;
        a.nonzero -= padded - n;
    }
    for (; i < stop; ++i)
        s->fingerprint += (uint64_t)bits[i] << (16 * (i & 3));
    acc_finish(&a, s);
}

static void run_part(tf_part *part) {
    init(&part->out);
    if (part->bf16)
        run_bf16((const uint16_t *)part->data, part->start, part->stop, &part->out);
    else
        run_f32((const uint32_t *)part->data, part->start, part->stop, &part->out);
}

/* Statistics of n elements at data (bf16: 0 for float32, 1 for bfloat16), on up to `threads`
 * threads of the OpenMP runtime torch already runs (built with -fopenmp only where that runtime is
 * libgomp, so the parts run on torch's own worker threads; otherwise one part after another).
 * Returns 0. */
int tf_stats_run(const void *data, int64_t n, int bf16, int threads, tf_stats *out) {
    enum { MAX_THREADS = 64 };
    tf_part parts[MAX_THREADS];
    int64_t most = n / MIN_PER_THREAD;
    if (threads > most) threads = (int)most;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1) threads = 1;
    int64_t blocks = n / BLOCK, per = blocks / threads;
    for (int t = 0; t < threads; ++t) {
        parts[t].data = data;
        parts[t].bf16 = bf16;
        parts[t].start = t * per * BLOCK;
        parts[t].stop = t == threads - 1 ? n : (t + 1) * per * BLOCK;
    }
    if (threads == 1) {
        run_part(&parts[0]); /* no parallel region: entering one costs more than a small tensor */
    } else {
#pragma omp parallel for num_threads(threads) schedule(static, 1)
        for (int t = 0; t < threads; ++t)
            run_part(&parts[t]);
    }
    init(out);
    for (int t = 0; t < threads; ++t)
        merge(out, &parts[t].out);
    return 0;
}

/* Histograms -------------------------------------------------------------------------------- */

/* Elements whose bins are computed at once (vectorised) before they are counted one by one. */
#define HIST_CHUNK 256
/* Copies of the bins that consecutive elements are counted in, so that a run of elements in one
 * bin does not wait on each increment.  Counting is the floor of this kernel's cost: one scalar
 * increment per element (about 0.5 ns), against 16 elements per vector operation for the
 * statistics above. */
#define SPREAD 4

typedef struct {
    const void *data;
    int64_t start, stop;
    int bf16, finite; /* finite: the caller knows every element is */
    double lo, width; /* bin = floor((x - lo) / width * bins), clamped to [0, bins - 1] */
    int64_t bins;
    int64_t *counts; /* this part's SPREAD rows of bins + 1 (the last: non-finite elements) */
} tf_hist_part;

/* The bin of x as recorder.stats.common.bin_of computes it, (x - lo) / width * bins in double:
 * for an element at a bin's edge this gives the bin numpy and torch give (the edge is exact). */
static inline int32_t exact_bin(float x, double lo, double width, int64_t bins) {
    double pos = ((double)x - lo) / width * (double)bins;
    pos = pos < 0.0 ? 0.0 : pos;
    pos = pos > (double)(bins - 1) ? (double)(bins - 1) : pos;
    return (int32_t)pos;
}

/* The bins of n elements whose float32 bits are bits(j) into slot[0..n) (the extra slot `bins`
 * for a non-finite element), and whether any may lie on the wrong side of an edge: a macro, so
 * that the float32 and bfloat16 loops, with and without non-finite elements, are compiled (and
 * vectorised) apart.  Tested on the bits (the float flags let the compiler assume finite
 * values), a non-finite element is binned as 0, then sent to the extra slot.  The bin is
 * computed in float, 16 elements to an AVX-512 vector; where float's rounding (a relative
 * 2.4e-7 at most) could put the element on the wrong side of an edge, near[j] asks for
 * exact_bin. */
#define HIST_SLOTS(bits, check)                                                                  \
    for (int j = 0; j < n; ++j) {                                                                \
        uint32_t b = (bits);                                                                     \
        int finite = check ? (b & 0x7fffffffu) < 0x7f800000u : 1;                                \
        uint32_t bv = finite ? b : 0u;                                                           \
        float v;                                                                                 \
        memcpy(&v, &bv, sizeof v);                                                               \
        float pos = (v - flo) * fscale;                                                          \
        pos = pos < 0.0f ? 0.0f : pos;                                                           \
        pos = pos > flast ? flast : pos;                                                         \
        float d = pos - (float)(int32_t)(pos + 0.5f);                                            \
        uint8_t nj = (uint8_t)(finite & ((d < 0.0f ? -d : d) < pos * 1e-6f + 1e-30f));           \
        near[j] = nj;                                                                            \
        any |= nj;                                                                               \
        int32_t k = (int32_t)pos;                                                                \
        k = k < 0 ? 0 : (k > ilast ? ilast : k); /* in range whatever a caller's `finite` says */ \
        slot[j] = finite ? k : (int32_t)bins;                                                    \
    }

static void hist_part(tf_hist_part *part) {
    int32_t slot[HIST_CHUNK];
    uint8_t near[HIST_CHUNK];
    const int64_t bins = part->bins, row = bins + 1;
    /* lo == hi: every finite element in bin 0 (a width of 1 puts them there) */
    const double lo = part->lo, width = part->width > 0.0 ? part->width : 1.0;
    const float flo = (float)lo, fscale = (float)((double)bins / width);
    const float flast = (float)(bins - 1);
    const int32_t ilast = (int32_t)(bins - 1);
    const uint32_t *f32 = (const uint32_t *)part->data;
    const uint16_t *bf16 = (const uint16_t *)part->data;
    int64_t *c0 = part->counts, *c1 = c0 + row, *c2 = c1 + row, *c3 = c2 + row;
    for (int64_t i = part->start; i < part->stop; i += HIST_CHUNK) {
        int n = part->stop - i < HIST_CHUNK ? (int)(part->stop - i) : HIST_CHUNK;
        uint8_t any = 0;
        if (part->bf16) {
            if (part->finite) {
                HIST_SLOTS((uint32_t)bf16[i + j] << 16, 0)
            } else {
                HIST_SLOTS((uint32_t)bf16[i + j] << 16, 1)
            }
        } else if (part->finite) {
            HIST_SLOTS(f32[i + j], 0)
        } else {
            HIST_SLOTS(f32[i + j], 1)
        }
        for (int j = 0; any && j < n; ++j)
            if (near[j]) {
                uint32_t b = part->bf16 ? (uint32_t)bf16[i + j] << 16 : f32[i + j];
                float v;
                memcpy(&v, &b, sizeof v);
                slot[j] = exact_bin(v, lo, width, bins);
            }
        int j = 0;
        for (; j + SPREAD <= n; j += SPREAD) {
            c0[slot[j]] += 1;
            c1[slot[j + 1]] += 1;
            c2[slot[j + 2]] += 1;
            c3[slot[j + 3]] += 1;
        }
        for (; j < n; ++j)
            c0[slot[j]] += 1;
    }
}

/* Counts of the finite elements among n float32 or bfloat16 values at data in `bins`
 * equal-width bins from lo to hi (hi in the last bin; every finite element in bin 0 when
 * lo == hi), added to counts[0..bins); lo and hi are the finite elements' min and max, so none
 * falls outside.  `finite`: the caller knows that every element is finite (tf_stats_run counted
 * no NaN or infinity), and the per-element test is left out.  On up to `threads` threads as tf_stats_run, each counting into bins of its
 * own.  Returns 0; -1 for bins outside 1..65536 or when memory for the threads' bins is short. */
int tf_hist_run(const void *data, int64_t n, int bf16, int finite, double lo, double hi,
                int64_t bins, int threads, int64_t *counts) {
    enum { MAX_THREADS = 64, MAX_BINS = 65536 };
    if (bins < 1 || bins > MAX_BINS)
        return -1;
    int64_t most = n / MIN_PER_THREAD;
    if (threads > most) threads = (int)most;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1) threads = 1;
    size_t rows = (size_t)SPREAD * (size_t)(bins + 1);
    int64_t *slots = (int64_t *)calloc((size_t)threads * rows, sizeof *slots);
    if (slots == NULL)
        return -1;
    tf_hist_part parts[MAX_THREADS];
    int64_t per = n / threads;
    for (int t = 0; t < threads; ++t) {
        parts[t].data = data;
        parts[t].bf16 = bf16;
        parts[t].finite = finite;
        parts[t].start = t * per;
        parts[t].stop = t == threads - 1 ? n : (t + 1) * per;
        parts[t].lo = lo;
        parts[t].width = hi - lo;
        parts[t].bins = bins;
        parts[t].counts = slots + (size_t)t * rows;
    }
    if (threads == 1) {
        hist_part(&parts[0]);
    } else {
#pragma omp parallel for num_threads(threads) schedule(static, 1)
        for (int t = 0; t < threads; ++t)
            hist_part(&parts[t]);
    }
    for (int t = 0; t < threads; ++t)
        for (int r = 0; r < SPREAD; ++r)
            for (int64_t k = 0; k < bins; ++k)
                counts[k] += parts[t].counts[(size_t)r * (size_t)(bins + 1) + (size_t)k];
    free(slots);
    return 0;
}

/* Light capture (recorder/flight/lightnative.py) ------------------------------------------- */

/* A light row's slot: the pass's statistics, then the centred sum of squares over the finite
 * elements where the sums alone would cancel in it (NaN elsewhere: the caller derives it). */
typedef struct {
    tf_stats s;
    double centred;
} tf_light;

/* Std from the sums alone while variance / mean square >= this (LIGHT_CANCEL in lightstats.py). */
#define LIGHT_CANCEL 0.1
/* Elements of an update computed at once (a multiple of BLOCK; 8 KiB of float32 on the stack). */
#define LIGHT_CHUNK 2048

/* On the bits: the float flags let the compiler assume that every double is finite. */
static inline int light_finite(double x) {
    uint64_t b;
    memcpy(&b, &x, sizeof b);
    return (b & 0x7fffffffffffffffull) < 0x7ff0000000000000ull;
}

static inline double light_nan(void) {
    uint64_t b = 0x7ff8000000000000ull;
    double x;
    memcpy(&x, &b, sizeof x);
    return x;
}

/* bfloat16 bits of float32 bits b, rounded to nearest even (as torch rounds; NaN stays NaN). */
static inline uint16_t light_bf16(uint32_t b) {
    if ((b & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((b >> 16) | 0x40u);
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

/* Float32 bits of new - old for element i (bfloat16: the difference rounded to bfloat16). */
static inline uint32_t light_diff(const void *old, const void *new_, int bf16, int64_t i) {
    uint32_t a, b;
    if (bf16) {
        a = (uint32_t)((const uint16_t *)new_)[i] << 16;
        b = (uint32_t)((const uint16_t *)old)[i] << 16;
    } else {
        a = ((const uint32_t *)new_)[i];
        b = ((const uint32_t *)old)[i];
    }
    float x, y, d;
    memcpy(&x, &a, sizeof x);
    memcpy(&y, &b, sizeof y);
    d = x - y;
    uint32_t r;
    memcpy(&r, &d, sizeof r);
    return bf16 ? (uint32_t)light_bf16(r) << 16 : r;
}

/* Sum of (x - mean)^2 less (Sum (x - mean))^2 / m over the m finite elements of n values
 * (old == NULL: the values at data; else new - old as light_diff computes it). */
static double light_centred(const void *old, const void *data, int64_t n, int bf16, double mean,
                            int64_t m) {
    double c = 0.0, d1 = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        uint32_t b;
        if (old != NULL)
            b = light_diff(old, data, bf16, i);
        else
            b = bf16 ? (uint32_t)((const uint16_t *)data)[i] << 16 : ((const uint32_t *)data)[i];
        int finite = (b & 0x7fffffffu) < 0x7f800000u;
        uint32_t bv = finite ? b : 0u;
        float v;
        memcpy(&v, &bv, sizeof v);
        double d = finite ? (double)v - mean : 0.0;
        c += d * d;
        d1 += d;
    }
    double centred = c - d1 * d1 / (double)m;
    return centred > 0.0 ? centred : 0.0;
}

/* The centred sum of squares where the sums alone would cancel in it (see tf_light), with old
 * and data as light_centred's.  Returns -1 when the sums overflowed float (the caller measures
 * the row in float64 instead), else 0. */
static int light_settle(const void *old, const void *data, int64_t n, int bf16, tf_light *out) {
    const tf_stats *s = &out->s;
    out->centred = light_nan();
    if (!light_finite(s->sum) || !light_finite(s->sumsq))
        return -1;
    int64_t m = n - s->nan - s->inf;
    if (m > 1 && s->sumsq > 0.0 && s->sum * s->sum >= (1.0 - LIGHT_CANCEL) * s->sumsq * (double)m)
        out->centred =
            s->min == s->max ? 0.0 : light_centred(old, data, n, bf16, s->sum / (double)m, m);
    return 0;
}

/* A light row of n float32 (bf16 0) or bfloat16 (1) elements at data, on up to `threads`
 * threads.  Returns the NaN and Inf count, or -1 when the sums overflowed float. */
int64_t tf_light_run(const void *data, int64_t n, int bf16, int threads, tf_light *out) {
    tf_stats_run(data, n, bf16, threads, &out->s);
    if (light_settle(NULL, data, n, bf16, out) < 0)
        return -1;
    return out->s.nan + out->s.inf;
}

/* One row per tensor j < k: n[j] elements at address data[j] with dtype code[j] (as bf16 of
 * tf_light_run; negative: skipped, out[j] left as it is) into out[j].  Returns how many rows
 * had sums that overflowed float (their out[j].centred is NaN and their sums not finite). */
int64_t tf_light_many(int64_t k, const int64_t *data, const int64_t *n, const int32_t *code,
                      int threads, tf_light *out) {
    int64_t lost = 0;
    for (int64_t j = 0; j < k; ++j)
        if (code[j] >= 0)
            lost += tf_light_run((const void *)(intptr_t)data[j], n[j], code[j], threads,
                                 &out[j]) < 0;
    return lost;
}

typedef struct {
    const void *old, *new_;
    int64_t start, stop; /* elements; start is a multiple of BLOCK */
    int bf16;
    tf_stats upd, par;
} tf_light_part;

static void light_update_part(tf_light_part *part) {
    uint32_t diff[LIGHT_CHUNK];
    init(&part->upd);
    init(&part->par);
    for (int64_t i = part->start; i < part->stop; i += LIGHT_CHUNK) {
        int64_t stop = i + LIGHT_CHUNK < part->stop ? i + LIGHT_CHUNK : part->stop;
        for (int64_t j = i; j < stop; ++j)
            diff[j - i] = light_diff(part->old, part->new_, part->bf16, j);
        tf_stats u, p;
        init(&u);
        init(&p);
        run_f32(diff, 0, stop - i, &u);
        if (part->bf16)
            run_bf16((const uint16_t *)part->new_, i, stop, &p);
        else
            run_f32((const uint32_t *)part->new_, i, stop, &p);
        merge(&part->upd, &u);
        merge(&part->par, &p);
    }
}

/* An optimizer step's rows of k parameters, in one pass over each: old[j], a copy of parameter
 * j taken before the step, and new[j], the parameter now (n[j] elements, dtype code[j] as
 * tf_light_many's, the same for both; negative: skipped).  The rows of new - old (computed in
 * the dtype, as torch subtracts) go to upd[j], those of new to par[j].  Returns how many rows
 * had sums that overflowed float (as tf_light_many). */
int64_t tf_light_update(int64_t k, const int64_t *old, const int64_t *new_, const int64_t *n,
                        const int32_t *code, int threads, tf_light *upd, tf_light *par) {
    enum { MAX_THREADS = 64 };
    int64_t lost = 0;
    for (int64_t j = 0; j < k; ++j) {
        if (code[j] < 0)
            continue;
        const void *a = (const void *)(intptr_t)old[j], *b = (const void *)(intptr_t)new_[j];
        tf_light_part parts[MAX_THREADS];
        int64_t most = n[j] / MIN_PER_THREAD;
        int t_n = threads > most ? (int)most : threads;
        if (t_n > MAX_THREADS) t_n = MAX_THREADS;
        if (t_n < 1) t_n = 1;
        int64_t per = n[j] / BLOCK / t_n;
        for (int t = 0; t < t_n; ++t) {
            parts[t].old = a;
            parts[t].new_ = b;
            parts[t].bf16 = code[j];
            parts[t].start = t * per * BLOCK;
            parts[t].stop = t == t_n - 1 ? n[j] : (t + 1) * per * BLOCK;
        }
        if (t_n == 1) {
            light_update_part(&parts[0]);
        } else {
#pragma omp parallel for num_threads(t_n) schedule(static, 1)
            for (int t = 0; t < t_n; ++t)
                light_update_part(&parts[t]);
        }
        init(&upd[j].s);
        init(&par[j].s);
        for (int t = 0; t < t_n; ++t) {
            merge(&upd[j].s, &parts[t].upd);
            merge(&par[j].s, &parts[t].par);
        }
        lost += light_settle(a, b, n[j], code[j], &upd[j]) < 0;
        lost += light_settle(NULL, b, n[j], code[j], &par[j]) < 0;
    }
    return lost;
}

/* Copies of bytes[j] bytes from address src[j] to dst[j] for each j < k whose code[j] is not
 * negative, a large one on up to `threads` threads. */
void tf_copy_many(int64_t k, const int64_t *dst, const int64_t *src, const int64_t *bytes,
                  const int32_t *code, int threads) {
    for (int64_t j = 0; j < k; ++j) {
        if (code[j] < 0)
            continue;
        char *d = (char *)(intptr_t)dst[j];
        const char *s = (const char *)(intptr_t)src[j];
        int64_t most = bytes[j] / (4 * MIN_PER_THREAD);
        int t_n = threads > most ? (int)most : threads;
        if (t_n <= 1) {
            memcpy(d, s, (size_t)bytes[j]);
            continue;
        }
        int64_t per = bytes[j] / t_n / 64 * 64;
#pragma omp parallel for num_threads(t_n) schedule(static, 1)
        for (int t = 0; t < t_n; ++t) {
            int64_t start = t * per, stop = t == t_n - 1 ? bytes[j] : (t + 1) * per;
            memcpy(d + start, s + start, (size_t)(stop - start));
        }
    }
}

/* Whether x is a NaN (on the bits, as light_finite). */
static inline int light_isnan(double x) {
    uint64_t b;
    memcpy(&b, &x, sizeof b);
    return (b & 0x7fffffffffffffffull) > 0x7ff0000000000000ull;
}

/* Light rows (tracefmt's LIGHT_ROW_DTYPE) of k rows whose row j is slot j: record j is the
 * itemsize bytes at out + j * itemsize, its fields at offsets[0..10] in the order name (int32),
 * kind, flags (uint8), min, max, mean, std, norm (float64), nan, inf, numel (uint64).  cols
 * holds k names, then k kinds, k numels and k negate flags (int64; negate: the row describes
 * -x).  Moments are over the finite elements; a row with none, or whose moments are not all
 * finite (huge values), gets NaN moments and flags `counts`, the others `counts | moments`. */
void tf_light_rows(int64_t k, const tf_light *slots, const int64_t *cols, const int64_t *offsets,
                   int64_t itemsize, int32_t counts, int32_t moments, unsigned char *out) {
    const int64_t *name = cols, *kind = cols + k, *numel = cols + 2 * k, *negate = cols + 3 * k;
    const double nan = light_nan();
    for (int64_t j = 0; j < k; ++j) {
        const tf_stats *s = &slots[j].s;
        int64_t m = numel[j] - s->nan - s->inf;
        double mm = m > 1 ? (double)m : 1.0;
        double mean = s->sum / mm, centred = slots[j].centred;
        if (light_isnan(centred))
            centred = s->sumsq - s->sum * mean;
        double std = sqrt((centred > 0.0 ? centred : 0.0) / mm), norm = sqrt(s->sumsq);
        double lo = s->min, hi = s->max;
        if (negate[j]) {
            lo = -s->max;
            hi = -s->min;
            mean = -mean;
        }
        int ok = m > 0 && light_finite(mean) && light_finite(std) && light_finite(norm);
        double v[5] = {lo, hi, mean, std, norm};
        uint64_t n[3] = {(uint64_t)s->nan, (uint64_t)s->inf, (uint64_t)numel[j]};
        int32_t nm = (int32_t)name[j];
        uint8_t kd = (uint8_t)kind[j], fl = (uint8_t)(ok ? counts | moments : counts);
        unsigned char *r = out + j * itemsize;
        memcpy(r + offsets[0], &nm, sizeof nm);
        memcpy(r + offsets[1], &kd, sizeof kd);
        memcpy(r + offsets[2], &fl, sizeof fl);
        for (int f = 0; f < 5; ++f)
            memcpy(r + offsets[3 + f], ok ? &v[f] : &nan, sizeof v[f]);
        for (int f = 0; f < 3; ++f)
            memcpy(r + offsets[8 + f], &n[f], sizeof n[f]);
    }
}
