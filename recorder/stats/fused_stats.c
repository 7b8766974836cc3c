/* One pass over a contiguous float32 or bfloat16 array: everything a statistics row needs.
 *
 * Built on first use by recorder/_native.py (any C99 compiler) and called through ctypes; see
 * that module for why it exists.  Per element: the bits decide zero, -0.0, NaN and infinity
 * (integer tests, exact under the float flags the build uses); the value feeds min, max, sum and
 * sum of squares over the finite elements.  Sums run in float over blocks of BLOCK elements
 * (vector lanes in parallel: at most 16 terms per lane) and the blocks are added in double: a
 * relative error of a few 1e-8 of the sum of magnitudes (measured), inside the 1e-6 that spec
 * section 5.7 allows.  A block sum that overflows float (|x| above about 1e19 for the squares)
 * comes back as an infinity; the caller then computes the row in float64 instead.  The
 * fingerprint is tracefmt's: the wrapping sum of the bytes read as little-endian 64-bit words,
 * the last word zero-padded.  Min and max do not tell -0.0 from 0.0: `negzero` counts the -0.0s,
 * and the caller asks torch only when one of them could be the min or the max.
 */
#include <float.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 128            /* a multiple of 4: every part starts on a 64-bit word */
#define MIN_PER_THREAD 65536 /* below this, a thread costs more than it saves */

typedef struct {
    double sum, sumsq, min, max; /* over the finite elements */
    int64_t nonzero, negzero, nan, inf;
    uint64_t fingerprint;
} tf_stats;

typedef struct {
    const void *data;
    int64_t start, stop; /* elements; start is a multiple of BLOCK */
    int bf16;
    tf_stats out;
} tf_part;

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

/* One element, given as float32 bits: counts, and its value in the running min, max and sums
 * (a non-finite element is counted, then stands in as 0 for the sums and +-FLT_MAX for min and
 * max, chosen on the bits: the float code never sees a NaN or an infinity). */
#define TF_ELEMENT(b, sum, sumsq, mn, mx, nonzero, negzero, nan, inf)                          \
    do {                                                                                       \
        uint32_t mag_ = (b) & 0x7fffffffu;                                                     \
        int finite_ = mag_ < 0x7f800000u;                                                      \
        uint32_t bv_ = finite_ ? (b) : 0u, blo_ = finite_ ? (b) : 0x7f7fffffu,                 \
                 bhi_ = finite_ ? (b) : 0xff7fffffu;                                           \
        float v_, lo_, hi_;                                                                    \
        memcpy(&v_, &bv_, sizeof v_);                                                          \
        memcpy(&lo_, &blo_, sizeof lo_);                                                       \
        memcpy(&hi_, &bhi_, sizeof hi_);                                                       \
        (nonzero) += mag_ != 0;                                                                \
        (negzero) += (b) == 0x80000000u;                                                       \
        (nan) += mag_ > 0x7f800000u;                                                           \
        (inf) += mag_ == 0x7f800000u;                                                          \
        (sum) += v_;                                                                           \
        (sumsq) += v_ * v_;                                                                    \
        (mn) = lo_ < (mn) ? lo_ : (mn);                                                        \
        (mx) = hi_ > (mx) ? hi_ : (mx);                                                        \
    } while (0)

static void run_f32(const uint32_t *bits, int64_t start, int64_t stop, tf_stats *s) {
    int64_t i = start;
    float mn = FLT_MAX, mx = -FLT_MAX;
    for (; i + BLOCK <= stop; i += BLOCK) {
        const uint32_t *p = bits + i;
        float sum = 0.0f, sumsq = 0.0f;
        uint32_t nonzero = 0, negzero = 0, nan = 0, inf = 0;
        uint64_t words = 0;
        for (int j = 0; j < BLOCK; ++j)
            TF_ELEMENT(p[j], sum, sumsq, mn, mx, nonzero, negzero, nan, inf);
        for (int j = 0; j < BLOCK; j += 2)
            words += (uint64_t)p[j] | ((uint64_t)p[j + 1] << 32);
        s->sum += sum;
        s->sumsq += sumsq;
        s->nonzero += nonzero;
        s->negzero += negzero;
        s->nan += nan;
        s->inf += inf;
        s->fingerprint += words;
    }
    float sum = 0.0f, sumsq = 0.0f; /* the tail (last part only): fewer than BLOCK */
    for (; i < stop; ++i) {
        TF_ELEMENT(bits[i], sum, sumsq, mn, mx, s->nonzero, s->negzero, s->nan, s->inf);
        s->fingerprint += (uint64_t)bits[i] << (32 * (i & 1));
    }
    s->sum += sum;
    s->sumsq += sumsq;
    s->min = mn;
    s->max = mx;
}

static void run_bf16(const uint16_t *bits, int64_t start, int64_t stop, tf_stats *s) {
    int64_t i = start;
    float mn = FLT_MAX, mx = -FLT_MAX;
    for (; i + BLOCK <= stop; i += BLOCK) {
        const uint16_t *p = bits + i;
        float sum = 0.0f, sumsq = 0.0f;
        uint32_t nonzero = 0, negzero = 0, nan = 0, inf = 0;
        uint64_t words = 0;
        for (int j = 0; j < BLOCK; ++j)
            TF_ELEMENT((uint32_t)p[j] << 16, sum, sumsq, mn, mx, nonzero, negzero, nan, inf);
        for (int j = 0; j < BLOCK; j += 4)
            words += (uint64_t)p[j] | ((uint64_t)p[j + 1] << 16) | ((uint64_t)p[j + 2] << 32)
                     | ((uint64_t)p[j + 3] << 48);
        s->sum += sum;
        s->sumsq += sumsq;
        s->nonzero += nonzero;
        s->negzero += negzero;
        s->nan += nan;
        s->inf += inf;
        s->fingerprint += words;
    }
    float sum = 0.0f, sumsq = 0.0f;
    for (; i < stop; ++i) {
        TF_ELEMENT((uint32_t)bits[i] << 16, sum, sumsq, mn, mx, s->nonzero, s->negzero, s->nan,
                   s->inf);
        s->fingerprint += (uint64_t)bits[i] << (16 * (i & 3));
    }
    s->sum += sum;
    s->sumsq += sumsq;
    s->min = mn;
    s->max = mx;
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
#pragma omp parallel for num_threads(threads) schedule(static, 1) if (threads > 1)
    for (int t = 0; t < threads; ++t)
        run_part(&parts[t]);
    init(out);
    for (int t = 0; t < threads; ++t)
        merge(out, &parts[t].out);
    return 0;
}
