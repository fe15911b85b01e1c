/* csrefine's CPU kernel (C99): slice + shift + CTF + statistics for blocks of band pixels, and
 * the images' moments for the screen.
 *
 * Built at install time (setup.py, a setuptools Extension) into a shared library that
 * csrefine.backends.cpu_backend loads with ctypes; it includes no Python header. The algorithm
 * and the operation order are the numpy reference backend's (csrefine.backends.numpy_backend),
 * in double precision, complex64 reference and image transforms widened on use, |X|^2 in
 * float for complex64 images as numpy computes it; tests/test_backends.py checks agreement to
 * 1e-9. Compiled with -ffp-contract=off: no fused multiply-add, as numpy has none.
 *
 * Work split: blocks of PIXEL_BLOCK band pixels; a call (one per thread, ctypes releases the
 * GIL) takes the blocks first, first + step, ...; each block owns disjoint columns of stats (no
 * write races, the same bits whatever the number of threads). Inside a block the loop runs
 * particle by particle, then over the block's pixels (mostly along one rfft2 row); the block's
 * sums are kept in a private array and added to stats at its end.
 *
 * Trigonometry leaves the per-pixel loop because the projection frequencies are a linear map of
 * the grid indices (the magnification matrix): the origin shift exp(2 pi i k.o) factorises into
 * per-particle tables along columns and rows (shift_x, shift_y); exp(i gamma) = exp(i D)
 * exp(i gamma_static) exp(-i phase shift), where the defocus phase D is a quadratic in the
 * column index along a row, so exp(i D) advances by a second-order complex recurrence,
 * re-seeded with sin/cos at the start of every row segment of a block (error ~1e-13).
 *
 * The rest of the cost is memory latency: each sample reads four cache lines of the padded 3D
 * transform (tens of MB) at effectively random places. The first PREFETCH_DISTANCE samples of
 * a particle's block are prefetched as soon as their coordinates are known, each later one
 * PREFETCH_DISTANCE samples ahead of its interpolation, so that several misses are in flight.
 * A hint only: the numbers are the same bits without it.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define N_STATS 6
#define PIXEL_BLOCK 64
#define PREFETCH_DISTANCE 8
#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define PREFETCH(p) ((void)(p))
#endif

/* Where the kernel finds its per-particle inputs: columns of the particle table
 * (csrefine.backends._tables.ParticleColumn). */
typedef struct {
    int64_t r00, r01, r02, r10, r11, r12, neg_quarter_b, scale;
} ParticleColumns;

/* Rows of the pixel table (csrefine.backends._tables.PixelRow). */
typedef struct {
    int64_t kx_px, ky_px, k2, cos_odd, sin_odd, cos_gamma, sin_gamma;
} PixelRows;

/* One call's inputs; arrays are C-contiguous, complex arrays interleaved (re, im). */
typedef struct {
    double *stats;            /* (n_cells, N_STATS, m), added to */
    const int64_t *cells;     /* (n,) */
    const void *observed;     /* (n, m) complex64, or complex128 where observed_double */
    const double *ptab;       /* (n, n_columns) */
    const double *pix;        /* (pixel rows, m) */
    const float *ref;         /* (nz, ny, nx) complex64, indexed [z + radius, y + radius, x] */
    const double *shift_x;    /* (n, half_box + 1) complex128 */
    const double *shift_y;    /* (n, 2 half_box) complex128 */
    const int64_t *col;       /* (m,) grid column of each band pixel */
    const int64_t *row;       /* (m,) grid row */
    const double *qtab;       /* (n, 7) defocus-phase coefficients */
    const int8_t *cont;       /* (m,) 1: the pixel follows the previous one on its row */
    int64_t n, m, n_cells, n_columns, ny, nx, radius, half_box, observed_double;
    double ref_scale;
    ParticleColumns pc;
    PixelRows pr;
} KernelArgs;

/* Per-block scratch, allocated once per call. */
typedef struct {
    double *acc, *wx, *wy, *wz, *buf_r, *buf_i;
    int64_t *ix, *iy, *iz;
    char *flips;
} Scratch;

static void observed_at(const KernelArgs *a, int64_t index, double *xr, double *xi, double *f) {
    if (a->observed_double) {
        const double *o = (const double *)a->observed + 2 * index;
        *xr = o[0];
        *xi = o[1];
        *f = o[0] * o[0] + o[1] * o[1];
    } else {
        const float *o = (const float *)a->observed + 2 * index;
        *xr = (double)o[0];
        *xi = (double)o[1];
        *f = (double)(o[0] * o[0] + o[1] * o[1]); /* in float, as numpy for complex64 */
    }
}

static const float *ref_at(const KernelArgs *a, int64_t z, int64_t y, int64_t x) {
    return a->ref + 2 * ((z * a->ny + y) * a->nx + x);
}

/* The sampling coordinates of particle i at pixels p0..p0+width-1: trilinear cells and weights,
 * ix = -1 beyond the reference; the first PREFETCH_DISTANCE samples prefetched. */
static void coordinates(const KernelArgs *a, const Scratch *s, int64_t i, int64_t p0,
                        int64_t width) {
    const double *pt = a->ptab + i * a->n_columns;
    const double a00 = pt[a->pc.r00], a01 = pt[a->pc.r01], a02 = pt[a->pc.r02];
    const double a10 = pt[a->pc.r10], a11 = pt[a->pc.r11], a12 = pt[a->pc.r12];
    const double *kx = a->pix + a->pr.kx_px * a->m + p0, *ky = a->pix + a->pr.ky_px * a->m + p0;
    const double r = (double)a->radius, inner = (double)(a->radius - 1), scale = a->ref_scale;
    for (int64_t q = 0; q < width; q++) {
        double x = (a00 * kx[q] + a10 * ky[q]) * scale;
        double y = (a01 * kx[q] + a11 * ky[q]) * scale;
        double z = (a02 * kx[q] + a12 * ky[q]) * scale;
        const char flip = x < 0;
        if (flip) {
            x = -x;
            y = -y;
            z = -z;
        }
        if (x <= r && fabs(y) <= inner && fabs(z) <= inner) {
            y = y + r;
            z = z + r;
            const int64_t x0 = (int64_t)x, y0 = (int64_t)y, z0 = (int64_t)z;
            s->ix[q] = x0;
            s->iy[q] = y0;
            s->iz[q] = z0;
            s->wx[q] = x - (double)x0;
            s->wy[q] = y - (double)y0;
            s->wz[q] = z - (double)z0;
            s->flips[q] = flip;
            if (q < PREFETCH_DISTANCE) {
                PREFETCH(ref_at(a, z0, y0, x0));
                PREFETCH(ref_at(a, z0, y0 + 1, x0));
                PREFETCH(ref_at(a, z0 + 1, y0, x0));
                PREFETCH(ref_at(a, z0 + 1, y0 + 1, x0));
            }
        } else {
            s->ix[q] = -1;
        }
    }
}

/* Trilinear interpolation of the reference at the block's samples into buf_r/buf_i (memory
 * bound: each later sample prefetched PREFETCH_DISTANCE ahead); returns the samples beyond it. */
static int64_t gather(const KernelArgs *a, const Scratch *s, int64_t width) {
    int64_t bad = 0;
    for (int64_t q = 0; q < width; q++) {
        const int64_t ahead = q + PREFETCH_DISTANCE;
        if (ahead < width && s->ix[ahead] >= 0) {
            PREFETCH(ref_at(a, s->iz[ahead], s->iy[ahead], s->ix[ahead]));
            PREFETCH(ref_at(a, s->iz[ahead], s->iy[ahead] + 1, s->ix[ahead]));
            PREFETCH(ref_at(a, s->iz[ahead] + 1, s->iy[ahead], s->ix[ahead]));
            PREFETCH(ref_at(a, s->iz[ahead] + 1, s->iy[ahead] + 1, s->ix[ahead]));
        }
        const int64_t x0 = s->ix[q];
        if (x0 < 0) {
            bad++;
            s->buf_r[q] = 0.0;
            s->buf_i[q] = 0.0;
            continue;
        }
        const double fx = s->wx[q], fy = s->wy[q], fz = s->wz[q], gx = 1.0 - fx;
        double sr = 0.0, si = 0.0;
        for (int dz = 0; dz < 2; dz++) {
            const double wz = dz ? fz : 1.0 - fz;
            for (int dy = 0; dy < 2; dy++) {
                const double wy = dy ? fy : 1.0 - fy;
                const double wzy = wz * wy;
                const float *v = ref_at(a, s->iz[q] + dz, s->iy[q] + dy, x0);
                const double w0 = wzy * gx, w1 = wzy * fx;
                sr += w0 * (double)v[0];
                si += w0 * (double)v[1];
                sr += w1 * (double)v[2];
                si += w1 * (double)v[3];
            }
        }
        s->buf_r[q] = sr;
        s->buf_i[q] = s->flips[q] ? -si : si;
    }
    return bad;
}

/* Shift, odd phase, CTF and envelope applied to the interpolated samples of particle i; their
 * statistics added to the block's sums acc (n_cells, N_STATS, width). */
static void statistics(const KernelArgs *a, const Scratch *s, int64_t i, int64_t p0,
                       int64_t width) {
    const int64_t m = a->m, half_box = a->half_box;
    const double *pt = a->ptab + i * a->n_columns, *qt = a->qtab + 7 * i;
    const double nb4 = pt[a->pc.neg_quarter_b], sc = pt[a->pc.scale];
    const double suu = qt[0], suv = qt[1], svv = qt[2], wr = qt[3], wi = qt[4];
    const double pcos = qt[5], psin = qt[6];
    const double *sx = a->shift_x + 2 * i * (half_box + 1), *sy = a->shift_y + 4 * i * half_box;
    const double *cos_odd = a->pix + a->pr.cos_odd * m, *sin_odd = a->pix + a->pr.sin_odd * m;
    const double *cos_g = a->pix + a->pr.cos_gamma * m, *sin_g = a->pix + a->pr.sin_gamma * m;
    const double *k2 = a->pix + a->pr.k2 * m;
    double *acc = s->acc + a->cells[i] * N_STATS * width;
    double rr = 1.0, ri = 0.0, tr = 1.0, ti = 0.0;
    for (int64_t q = 0; q < width; q++) {
        const int64_t p = p0 + q;
        const double sr = s->buf_r[q], si = s->buf_i[q];
        /* origin shift and odd phase: exp(i 2pi k.o) = ex[col] * ey[row] (k linear in the
         * grid indices), times exp(i odd) precomputed per pixel */
        const double *ex = sx + 2 * a->col[p], *ey = sy + 2 * a->row[p];
        double er = ex[0] * ey[0] - ex[1] * ey[1];
        double ei = ex[0] * ey[1] + ex[1] * ey[0];
        const double ca = er * cos_odd[p] - ei * sin_odd[p];
        const double sa = er * sin_odd[p] + ei * cos_odd[p];
        const double pr = sr * ca - si * sa;
        const double pim = sr * sa + si * ca;
        /* CTF phase: exp(i gamma) = exp(i D) exp(i gamma_static) exp(-i phase_shift), with the
         * defocus phase D a quadratic in the column j along a row: exp(i D) advances by
         * T = exp(i (D(j+1) - D(j))), and T by W = exp(2 i uSu) (no trigonometry per pixel). */
        if (q == 0 || a->cont[p] == 0) {
            const double jj = (double)a->col[p], yy = (double)(a->row[p] - half_box);
            const double d = jj * jj * suu + 2.0 * jj * yy * suv + yy * yy * svv;
            rr = cos(d);
            ri = sin(d);
            const double t = (2.0 * jj + 1.0) * suu + 2.0 * yy * suv;
            tr = cos(t);
            ti = sin(t);
        } else {
            double nr = rr * tr - ri * ti;
            ri = rr * ti + ri * tr;
            rr = nr;
            nr = tr * wr - ti * wi;
            ti = tr * wi + ti * wr;
            tr = nr;
        }
        er = rr * cos_g[p] - ri * sin_g[p];
        ei = rr * sin_g[p] + ri * cos_g[p];
        const double cg = er * pcos + ei * psin;
        const double sg = ei * pcos - er * psin;
        const double env = nb4 == 0.0 ? sc : sc * exp(nb4 * k2[p]);
        double xr, xi, f;
        observed_at(a, i * m + p, &xr, &xi, &f);
        const double pp = env * env * (pr * pr + pim * pim);
        const double xp = env * (xr * pr + xi * pim);
        acc[0 * width + q] += pp * sg * sg;
        acc[1 * width + q] += pp * sg * cg;
        acc[2 * width + q] += pp * cg * cg;
        acc[3 * width + q] += -xp * sg;
        acc[4 * width + q] += -xp * cg;
        acc[5 * width + q] += f;
    }
}

/* Pixels p0:p1 of the batch; returns the number of samples beyond the reference. */
static int64_t block(const KernelArgs *a, const Scratch *s, int64_t p0, int64_t p1) {
    const int64_t width = p1 - p0, per_cell = N_STATS * width;
    int64_t bad = 0;
    memset(s->acc, 0, sizeof(double) * (size_t)(a->n_cells * per_cell));
    for (int64_t i = 0; i < a->n; i++) {
        coordinates(a, s, i, p0, width);
        bad += gather(a, s, width);
        statistics(a, s, i, p0, width);
    }
    for (int64_t c = 0; c < a->n_cells; c++)
        for (int64_t k = 0; k < N_STATS; k++)
            for (int64_t q = 0; q < width; q++)
                a->stats[(c * N_STATS + k) * a->m + p0 + q] += s->acc[c * per_cell + k * width + q];
    return bad;
}

/* stats += the sums of the pixel blocks first, first + step, ...; returns the number of
 * samples beyond the reference, or -1 when no memory was left for the scratch. */
int64_t csrefine_accumulate(const KernelArgs *a, int64_t first, int64_t step) {
    Scratch s;
    const size_t w = PIXEL_BLOCK;
    s.acc = malloc(sizeof(double) * (size_t)(a->n_cells * N_STATS) * w);
    s.wx = malloc(sizeof(double) * 5 * w);
    s.ix = malloc(sizeof(int64_t) * 3 * w);
    s.flips = malloc(w);
    int64_t bad = -1;
    if (s.acc && s.wx && s.ix && s.flips) {
        s.wy = s.wx + w;
        s.wz = s.wy + w;
        s.buf_r = s.wz + w;
        s.buf_i = s.buf_r + w;
        s.iy = s.ix + w;
        s.iz = s.iy + w;
        bad = 0;
        const int64_t n_blocks = (a->m + PIXEL_BLOCK - 1) / PIXEL_BLOCK;
        for (int64_t b = first; b < n_blocks; b += step) {
            const int64_t p0 = b * PIXEL_BLOCK;
            bad += block(a, &s, p0, p0 + PIXEL_BLOCK < a->m ? p0 + PIXEL_BLOCK : a->m);
        }
    }
    free(s.acc);
    free(s.wx);
    free(s.ix);
    free(s.flips);
    return bad;
}

/* Mean and variance (population) of the rows start..stop-1 of images (rows, n_pixels) float32,
 * summed in double. */
void csrefine_moments(const float *images, int64_t n_pixels, int64_t start, int64_t stop,
                      double *mean, double *variance) {
    for (int64_t i = start; i < stop; i++) {
        const float *row = images + i * n_pixels;
        double total = 0.0, square = 0.0;
#pragma omp simd reduction(+ : total, square)
        for (int64_t j = 0; j < n_pixels; j++) {
            const double x = (double)row[j];
            total += x;
            square += x * x;
        }
        const double m = total / (double)n_pixels, v = square / (double)n_pixels - m * m;
        mean[i] = m;
        variance[i] = v > 0.0 ? v : 0.0;
    }
}
