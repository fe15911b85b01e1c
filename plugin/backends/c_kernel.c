/* csrefine's fused CPU kernel in C99: slice + shift + CTF + statistics for blocks of band pixels.
 *
 * The same algorithm, operation order and precision as the numba kernel
 * (csrefine/backends/numba_backend.py, whose docstring explains it); both must agree with the
 * numpy reference backend to rounding (tests/test_backends.py). csrefine/backends/c_backend.py
 * prepends the table layout (#define CSREFINE_PT_..., CSREFINE_PX_..., generated from
 * csrefine/backends/_tables.py), compiles this file once per machine into the user's cache and
 * calls it through ctypes, one call per thread: thread t of T takes the blocks t, t + T, ...
 * (each block owns disjoint columns of stats: no write races). ctypes releases the GIL.
 *
 * Arrays are C-contiguous; complex arrays are interleaved (re, im):
 *   stats    (n_cells, N_STATS, m) double, added to
 *   cells    (n,) int64
 *   observed (n, m) complex64 (csrefine_accumulate_c64) or complex128 (csrefine_accumulate_c128)
 *   ptab     (n, N_PARTICLE_COLUMNS) double;  pix (pixel rows, m) double
 *   ref      (nz, ny, nx) complex64, indexed [z + radius, y + radius, x]
 *   shift_x  (n, half_box + 1) complex128; shift_y (n, 2 half_box) complex128; qtab (n, 7)
 *   col, row (m,) int64; cont (m,) int8
 * Compile with -ffp-contract=off (no fused multiply-add: the numba kernel has none). Unlike the
 * numba kernel, the gather prefetches the reference's cache lines a few samples ahead.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CSREFINE_PI 3.14159265358979323846 /* = numpy.pi as a double */
/* The gather reads four cache lines of the reference per sample, at effectively random places:
 * it is bound by memory latency. Prefetching the lines of the sample PREFETCH_DISTANCE ahead
 * keeps several misses in flight (measured on the 2-core Xeon VM, box-128 set: 10-25% faster
 * than without; 8 beat 4 and 16). A hint only: the numbers are the same bits. */
#define PREFETCH_DISTANCE 8
#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)(p))
#endif
#define PT(i, c) ptab[(int64_t)(i) * CSREFINE_N_PARTICLE_COLUMNS + (c)]
#define PX(r, p) pix[(int64_t)(r) * m + (p)]

typedef struct {
    int64_t n, m, n_cells;
    const int64_t *cells;
    const double *ptab, *pix;
    const float *ref;
    int64_t ny, nx;
    int64_t radius;
    double ref_scale, defocus_factor;
    int separable;
    const double *shift_x, *shift_y;
    int64_t sx_cols, sy_cols;
    const int64_t *col, *row;
    const double *qtab;
    const int8_t *cont;
    int64_t half_box;
    int touch;
} Inputs;

/* Per-block scratch, allocated once per call. */
typedef struct {
    double *acc;
    int64_t *ix, *iy, *iz;
    double *wx, *wy, *wz, *buf_r, *buf_i;
    char *flips;
} Scratch;

static int scratch_alloc(Scratch *s, int64_t n_cells, int64_t width) {
    s->acc = (double *)malloc(sizeof(double) * (size_t)(n_cells * CSREFINE_N_STATS * width));
    s->ix = (int64_t *)malloc(sizeof(int64_t) * 3 * (size_t)width);
    s->wx = (double *)malloc(sizeof(double) * 5 * (size_t)width);
    s->flips = (char *)malloc((size_t)width);
    if (!s->acc || !s->ix || !s->wx || !s->flips) return -1;
    s->iy = s->ix + width;
    s->iz = s->iy + width;
    s->wy = s->wx + width;
    s->wz = s->wy + width;
    s->buf_r = s->wz + width;
    s->buf_i = s->buf_r + width;
    return 0;
}

static void scratch_free(Scratch *s) {
    free(s->acc);
    free(s->ix);
    free(s->wx);
    free(s->flips);
}

/* Sampling coordinates of the block's pixels for one particle (touching the reference's cache
 * lines if asked); returns the touch sum. */
static double coordinates(const Inputs *in, const Scratch *s, int64_t i, int64_t p0,
                          int64_t width) {
    const double *ptab = in->ptab, *pix = in->pix;
    const int64_t m = in->m;
    const double a00 = PT(i, CSREFINE_PT_R00), a01 = PT(i, CSREFINE_PT_R01);
    const double a02 = PT(i, CSREFINE_PT_R02), a10 = PT(i, CSREFINE_PT_R10);
    const double a11 = PT(i, CSREFINE_PT_R11), a12 = PT(i, CSREFINE_PT_R12);
    const double r = (double)in->radius, sc = in->ref_scale;
    double tsum = 0.0;
    for (int64_t q = 0; q < width; q++) {
        const double kxp = PX(CSREFINE_PX_KX_PX, p0 + q), kyp = PX(CSREFINE_PX_KY_PX, p0 + q);
        double x = (a00 * kxp + a10 * kyp) * sc;
        double y = (a01 * kxp + a11 * kyp) * sc;
        double z = (a02 * kxp + a12 * kyp) * sc;
        const int fl = x < 0;
        if (fl) {
            x = -x;
            y = -y;
            z = -z;
        }
        if (x <= r && fabs(y) <= r - 1 && fabs(z) <= r - 1) {
            y = y + r;
            z = z + r;
            const int64_t x0 = (int64_t)x, y0 = (int64_t)y, z0 = (int64_t)z;
            s->ix[q] = x0;
            s->iy[q] = y0;
            s->iz[q] = z0;
            s->wx[q] = x - (double)x0;
            s->wy[q] = y - (double)y0;
            s->wz[q] = z - (double)z0;
            s->flips[q] = (char)fl;
            if (in->touch) {
                const float *ref = in->ref;
                const int64_t ny = in->ny, nx = in->nx;
                tsum += (double)(ref[2 * ((z0 * ny + y0) * nx + x0)]
                                 + ref[2 * ((z0 * ny + y0 + 1) * nx + x0)])
                        + ref[2 * (((z0 + 1) * ny + y0) * nx + x0)]
                        + ref[2 * (((z0 + 1) * ny + y0 + 1) * nx + x0)];
            }
        } else {
            s->ix[q] = -1;
        }
    }
    return tsum;
}

/* Trilinear interpolation of the block's samples (Friedel-conjugated where flipped); returns
 * the number of samples outside the reference. */
static int64_t gather(const Inputs *in, const Scratch *s, int64_t width) {
    const float *ref = in->ref;
    const int64_t ny = in->ny, nx = in->nx;
    int64_t bad = 0;
    for (int64_t q = 0; q < width; q++) {
        const int64_t ahead = q + PREFETCH_DISTANCE;
        if (ahead < width && s->ix[ahead] >= 0) {  /* the 4 cache lines of a later sample */
            const float *p = ref + 2 * ((s->iz[ahead] * ny + s->iy[ahead]) * nx + s->ix[ahead]);
            PREFETCH(p);
            PREFETCH(p + 2 * nx);
            PREFETCH(p + 2 * ny * nx);
            PREFETCH(p + 2 * (ny + 1) * nx);
        }
        const int64_t x0 = s->ix[q];
        if (x0 < 0) {
            bad++;
            s->buf_r[q] = 0.0;
            s->buf_i[q] = 0.0;
            continue;
        }
        const int64_t y0 = s->iy[q], z0 = s->iz[q];
        const double fx = s->wx[q], fy = s->wy[q], fz = s->wz[q], gx = 1.0 - fx;
        double sr = 0.0, si = 0.0;
        for (int dz = 0; dz < 2; dz++) {
            const double wz = dz ? fz : 1.0 - fz;
            for (int dy = 0; dy < 2; dy++) {
                const double wy = dy ? fy : 1.0 - fy;
                const double wzy = wz * wy;
                const float *v = ref + 2 * (((z0 + dz) * ny + y0 + dy) * nx + x0);
                const double w0 = wzy * gx, w1 = wzy * fx;
                sr += w0 * (double)v[0];
                si += w0 * (double)v[1];
                sr += w1 * (double)v[2];
                si += w1 * (double)v[3];
            }
        }
        if (s->flips[q]) si = -si;
        s->buf_r[q] = sr;
        s->buf_i[q] = si;
    }
    return bad;
}

/* Shift, CTF and the sums of one particle over the block (the observed transform's element
 * type is OBS_T; F = |X|^2 is evaluated in OBS_T, as numpy does). */
#define DEFINE_STATISTICS(NAME, OBS_T)                                                          \
static void NAME(const Inputs *in, const Scratch *s, const OBS_T *observed, int64_t i,        \
                 int64_t p0, int64_t width) {                                                  \
    const double *ptab = in->ptab, *pix = in->pix;                                              \
    const int64_t m = in->m;                                                                    \
    const double two_pi = 2.0 * CSREFINE_PI;                                                   \
    const int64_t c = in->cells[i];                                                             \
    double *acc = s->acc + c * CSREFINE_N_STATS * width;                                       \
    const double mean = PT(i, CSREFINE_PT_MEAN_DEFOCUS_A);                                      \
    const double half = PT(i, CSREFINE_PT_HALF_ASTIGMATISM_A);                                  \
    const double cphi = PT(i, CSREFINE_PT_COS_2PHI), sphi = PT(i, CSREFINE_PT_SIN_2PHI);        \
    const double ph = PT(i, CSREFINE_PT_PHASE_SHIFT_RAD);                                       \
    const double nb4 = PT(i, CSREFINE_PT_NEG_QUARTER_B_A2), sc = PT(i, CSREFINE_PT_SCALE);      \
    const double ox = PT(i, CSREFINE_PT_ORIGIN_X_A), oy = PT(i, CSREFINE_PT_ORIGIN_Y_A);        \
    const double *qt = in->qtab + (in->separable ? i * 7 : 0);                                  \
    const double suu = qt[0], suv = qt[1], svv = qt[2], wr = qt[3], wi = qt[4];                 \
    const double pcos = qt[5], psin = qt[6];                                                    \
    const double *sxr = in->shift_x + (in->separable ? 2 * i * in->sx_cols : 0);                \
    const double *syr = in->shift_y + (in->separable ? 2 * i * in->sy_cols : 0);                \
    double rr = 1.0, ri = 0.0, tr = 1.0, ti = 0.0;                                             \
    for (int64_t q = 0; q < width; q++) {                                                       \
        const int64_t p = p0 + q;                                                               \
        const double sr = s->buf_r[q], si = s->buf_i[q];                                        \
        double ca, sa, cg, sg;                                                                  \
        if (in->separable) {                                                                    \
            const double *ex = sxr + 2 * in->col[p], *ey = syr + 2 * in->row[p];                \
            const double er = ex[0] * ey[0] - ex[1] * ey[1];                                    \
            const double ei = ex[0] * ey[1] + ex[1] * ey[0];                                    \
            ca = er * PX(CSREFINE_PX_COS_ODD_PHASE, p) - ei * PX(CSREFINE_PX_SIN_ODD_PHASE, p); \
            sa = er * PX(CSREFINE_PX_SIN_ODD_PHASE, p) + ei * PX(CSREFINE_PX_COS_ODD_PHASE, p); \
        } else {                                                                                \
            const double arg = two_pi * (PX(CSREFINE_PX_KX_PER_A, p) * ox                       \
                                         + PX(CSREFINE_PX_KY_PER_A, p) * oy)                    \
                               + PX(CSREFINE_PX_ODD_PHASE, p);                                  \
            ca = cos(arg);                                                                      \
            sa = sin(arg);                                                                      \
        }                                                                                       \
        const double pr = sr * ca - si * sa, pim = sr * sa + si * ca;                           \
        const double k2 = PX(CSREFINE_PX_K2, p);                                                \
        if (in->separable) {                                                                    \
            if (q == 0 || in->cont[p] == 0) {                                                   \
                const double jj = (double)in->col[p];                                           \
                const double yy = (double)(in->row[p] - in->half_box);                          \
                const double d = jj * jj * suu + 2.0 * jj * yy * suv + yy * yy * svv;           \
                rr = cos(d);                                                                    \
                ri = sin(d);                                                                    \
                const double t = (2.0 * jj + 1.0) * suu + 2.0 * yy * suv;                       \
                tr = cos(t);                                                                    \
                ti = sin(t);                                                                    \
            } else {                                                                            \
                double nr = rr * tr - ri * ti;                                                  \
                ri = rr * ti + ri * tr;                                                         \
                rr = nr;                                                                        \
                nr = tr * wr - ti * wi;                                                         \
                ti = tr * wi + ti * wr;                                                         \
                tr = nr;                                                                        \
            }                                                                                   \
            const double gr = rr * PX(CSREFINE_PX_COS_GAMMA_STATIC, p)                          \
                              - ri * PX(CSREFINE_PX_SIN_GAMMA_STATIC, p);                       \
            const double gi = rr * PX(CSREFINE_PX_SIN_GAMMA_STATIC, p)                          \
                              + ri * PX(CSREFINE_PX_COS_GAMMA_STATIC, p);                       \
            cg = gr * pcos + gi * psin;                                                         \
            sg = gi * pcos - gr * psin;                                                         \
        } else {                                                                                \
            const double defocus = mean + half * (PX(CSREFINE_PX_COS_2THETA, p) * cphi          \
                                                  + PX(CSREFINE_PX_SIN_2THETA, p) * sphi);      \
            const double g = in->defocus_factor * defocus * k2                                  \
                             + PX(CSREFINE_PX_GAMMA_STATIC, p) - ph;                            \
            sg = sin(g);                                                                        \
            cg = cos(g);                                                                        \
        }                                                                                       \
        const double env = nb4 == 0.0 ? sc : sc * exp(nb4 * k2);                                \
        const OBS_T xr = observed[2 * (i * m + p)], xi = observed[2 * (i * m + p) + 1];         \
        const double pp = env * env * (pr * pr + pim * pim);                                    \
        const double xp = env * ((double)xr * pr + (double)xi * pim);                           \
        const OBS_T f = xr * xr + xi * xi;                                                      \
        acc[0 * width + q] += pp * sg * sg;                                                     \
        acc[1 * width + q] += pp * sg * cg;                                                     \
        acc[2 * width + q] += pp * cg * cg;                                                     \
        acc[3 * width + q] += -xp * sg;                                                         \
        acc[4 * width + q] += -xp * cg;                                                         \
        acc[5 * width + q] += (double)f;                                                        \
    }                                                                                           \
}

DEFINE_STATISTICS(statistics_c64, float)
DEFINE_STATISTICS(statistics_c128, double)

/* The blocks b_first, b_first + b_step, ... of the m pixels, for particles 0..n-1. */
#define DEFINE_ACCUMULATE(NAME, STATS_FN, OBS_T)                                                \
int64_t NAME(double *stats, int64_t n_cells, const int64_t *cells, const OBS_T *observed,      \
             int64_t n, int64_t m, const double *ptab, const double *pix, const float *ref,     \
             int64_t ny, int64_t nx, int64_t radius, double ref_scale, double defocus_factor,   \
             int64_t block, int64_t b_first, int64_t b_step, int separable,                     \
             const double *shift_x, int64_t sx_cols, const double *shift_y, int64_t sy_cols,    \
             const int64_t *col, const int64_t *row, const double *qtab, const int8_t *cont,    \
             int64_t half_box, int touch, double *touch_sink) {                                 \
    Inputs in = {n, m, n_cells, cells, ptab, pix, ref, ny, nx, radius, ref_scale,               \
                 defocus_factor, separable, shift_x, shift_y, sx_cols, sy_cols, col, row,       \
                 qtab, cont, half_box, touch};                                                  \
    Scratch s;                                                                                  \
    if (scratch_alloc(&s, n_cells, block) != 0) {                                               \
        scratch_free(&s);                                                                       \
        return -1;                                                                              \
    }                                                                                           \
    int64_t bad = 0;                                                                            \
    double sink = 0.0;                                                                          \
    const int64_t n_blocks = (m + block - 1) / block;                                           \
    for (int64_t b = b_first; b < n_blocks; b += b_step) {                                      \
        const int64_t p0 = b * block;                                                           \
        const int64_t width = (p0 + block < m ? p0 + block : m) - p0;                           \
        memset(s.acc, 0, sizeof(double) * (size_t)(n_cells * CSREFINE_N_STATS * width));        \
        for (int64_t i = 0; i < n; i++) {                                                       \
            sink += coordinates(&in, &s, i, p0, width);                                         \
            bad += gather(&in, &s, width);                                                      \
            STATS_FN(&in, &s, observed, i, p0, width);                                          \
        }                                                                                       \
        for (int64_t c = 0; c < n_cells; c++)                                                   \
            for (int64_t k = 0; k < CSREFINE_N_STATS; k++)                                      \
                for (int64_t q = 0; q < width; q++)                                             \
                    stats[(c * CSREFINE_N_STATS + k) * m + p0 + q]                              \
                        += s.acc[(c * CSREFINE_N_STATS + k) * width + q];                       \
    }                                                                                           \
    scratch_free(&s);                                                                           \
    *touch_sink += sink;                                                                        \
    return bad;                                                                                 \
}

DEFINE_ACCUMULATE(csrefine_accumulate_c64, statistics_c64, float)
DEFINE_ACCUMULATE(csrefine_accumulate_c128, statistics_c128, double)

/* The table layout this library was compiled with (checked by the loader). */
int64_t csrefine_layout_id(void) { return CSREFINE_LAYOUT_ID; }
