/* Compiled ports of two of llama.cpp's per-block scale searches (ggml-quants.c
 * make_qkx2_quants / make_qkx3_quants with weights, and make_qx_quants), used by
 * quantport.quant._ggml_search when this library was built (setup.py); the numpy versions there
 * are the reference these must equal bit for bit (tests/quant/test_kq_search.py).
 *
 * Layout and arithmetic are those of _ggml_search.py: element-major arrays x[i*B + b] (i: the
 * value's index in its block, b: the block), every block an independent lane, float32
 * operations one by one in the C reference's order, sums sequential over i. The inner loops run
 * over lanes, so the compiler vectorizes across blocks without reordering any block's
 * arithmetic (no -ffast-math; -ffp-contract=off keeps a*b+c from fusing into an FMA, which
 * rounds once instead of twice). nearest_int is ggml's: add 1.5*2^23, which rounds half to
 * even, exact for |v| < 2^22; the searches keep |v| near nmax.
 *
 * Non-finite inputs (and a block whose range is so small that its inverse scale overflows) take
 * the numpy path instead: the functions return 1 and write nothing the caller keeps.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define TILE 64 /* lanes per pass: a few [32][TILE] float arrays stay in L1 */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

static inline float rnd(float v) {
    /* nearest_int of ggml-quants.c for |v| < 2^22: round half to even (without -ffast-math
     * the compiler may not fold the two roundings into none) */
    return (v + 12582912.f) - 12582912.f;
}

static inline float clampf(float v, float lo, float hi) {
    /* numpy's clip: min(max(v, lo), hi) */
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}

/* make_qkx2_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, use_mad) for
 * B blocks. xmin/xmax: per block, numpy's reductions (their signed zeros are numpy's); xmin > 0
 * already replaced by +0.0. Outputs as _ggml_search.make_qkx2_quants returns them:
 * scale, the_min (-min), iscale, min0. */
CLONES
int qp_make_qkx2(const float *x, const float *w, int n, int64_t B, int nmax, float rmin,
                 float rdelta, int nstep, int use_mad, const float *xmin, const float *xmax,
                 float *scale_out, float *the_min_out, float *iscale_out, float *min0_out) {
    float ell[32 * TILE], xm[32 * TILE];
    float sw[TILE], sx[TILE], best_err[TILE], scale[TILE], best_isc[TILE], best_off[TILE];
    float cur_min[TILE], rng[TILE], isc[TILE], sl[TILE], sl2[TILE], sxl[TILE], cur[TILE];
    float ts[TILE], tm[TILE], dd[TILE];
    unsigned char flat[TILE];
    const float fmax = (float)nmax;
    if (n > 32 || n < 2) return 1;
    for (int64_t b0 = 0; b0 < B; b0 += TILE) {
        const int T = (int)(B - b0 < TILE ? B - b0 : TILE);
        int bad = 0;
        for (int t = 0; t < T; t++) {
            flat[t] = xmax[b0 + t] == xmin[b0 + t];
            cur_min[t] = xmin[b0 + t];
        }
        /* sum_w = weights[0] + ..., sum_x = w[0]*x[0] + ... (C starts from the first term) */
        for (int t = 0; t < T; t++) {
            sw[t] = w[b0 + t];
            sx[t] = w[b0 + t] * x[b0 + t];
        }
        for (int i = 1; i < n; i++) {
            const float *xi = x + i * B + b0, *wi = w + i * B + b0;
            for (int t = 0; t < T; t++) {
                sw[t] += wi[t];
                sx[t] += wi[t] * xi[t];
            }
        }
        for (int i = 0; i < n; i++) {
            const float *xi = x + i * B + b0, *wi = w + i * B + b0;
            for (int t = 0; t < T; t++) bad |= !(fabsf(xi[t]) <= FLT_MAX && fabsf(wi[t]) <= FLT_MAX);
        }
        if (bad) return 1;
        /* the first candidate: iscale = nmax/(max - min), error of its codes */
        for (int t = 0; t < T; t++) {
            rng[t] = flat[t] ? 1.f : xmax[b0 + t] - cur_min[t];
            best_isc[t] = fmax / rng[t];
            scale[t] = 1.f / best_isc[t];
            best_err[t] = 0.f;
            bad |= !flat[t] && !(best_isc[t] <= FLT_MAX);
        }
        if (bad) return 1;
        for (int i = 0; i < n; i++) {
            const float *xi = x + i * B + b0, *wi = w + i * B + b0;
            float *xmi = xm + i * TILE;
            for (int t = 0; t < T; t++) {
                xmi[t] = xi[t] - cur_min[t];
                float l = clampf(rnd(xmi[t] * best_isc[t]), 0.f, fmax);
                float d = l * scale[t] + cur_min[t] - xi[t];
                d = use_mad ? fabsf(d) : d * d;
                best_err[t] += d * wi[t];
            }
        }
        for (int t = 0; t < T; t++) {
            if (flat[t]) best_err[t] = -INFINITY; /* C returns before the search */
            best_off[t] = cur_min[t];
            rng[t] = xmax[b0 + t] - cur_min[t];
        }
        for (int step = 0; step <= nstep; step++) {
            const float c = (rmin + rdelta * (float)step) + fmax;
            for (int t = 0; t < T; t++) {
                isc[t] = c / rng[t];
                bad |= !flat[t] && !(isc[t] <= FLT_MAX);
                sl[t] = 0.f;
                sl2[t] = 0.f;
                sxl[t] = 0.f;
            }
            if (bad) return 1;
            for (int i = 0; i < n; i++) {
                const float *xi = x + i * B + b0, *wi = w + i * B + b0;
                float *li = ell + i * TILE, *xmi = xm + i * TILE;
                for (int t = 0; t < T; t++) {
                    float l = clampf(rnd(xmi[t] * isc[t]), 0.f, fmax);
                    float wl = wi[t] * l;
                    li[t] = l;
                    sl[t] += wl;
                    sxl[t] += wl * xi[t];
                    sl2[t] += wl * l;
                }
            }
            for (int t = 0; t < T; t++) {
                /* D = sum_w*sum_l2 - sum_l*sum_l; this_scale, this_min by Cramer's rule */
                dd[t] = sw[t] * sl2[t] - sl[t] * sl[t];
                ts[t] = (sw[t] * sxl[t] - sx[t] * sl[t]) / dd[t];
                tm[t] = (sl2[t] * sx[t] - sl[t] * sxl[t]) / dd[t];
                if (tm[t] > 0) {
                    ts[t] = sxl[t] / sl2[t];
                    tm[t] = 0.f;
                }
                cur[t] = 0.f;
            }
            for (int i = 0; i < n; i++) {
                const float *xi = x + i * B + b0, *wi = w + i * B + b0;
                const float *li = ell + i * TILE;
                for (int t = 0; t < T; t++) {
                    float d = li[t] * ts[t] + tm[t] - xi[t];
                    d = use_mad ? fabsf(d) : d * d;
                    cur[t] += d * wi[t];
                }
            }
            int any = 0;
            for (int t = 0; t < T; t++) {
                if (cur[t] < best_err[t] && dd[t] > 0) {
                    best_err[t] = cur[t];
                    scale[t] = ts[t];
                    best_isc[t] = isc[t];
                    best_off[t] = cur_min[t];
                    cur_min[t] = tm[t];
                    rng[t] = xmax[b0 + t] - cur_min[t];
                    any = 1;
                }
            }
            if (any) {
                for (int i = 0; i < n; i++) {
                    const float *xi = x + i * B + b0;
                    float *xmi = xm + i * TILE;
                    for (int t = 0; t < T; t++) xmi[t] = xi[t] - cur_min[t];
                }
            }
        }
        for (int t = 0; t < T; t++) {
            scale_out[b0 + t] = flat[t] ? 0.f : scale[t];
            the_min_out[b0 + t] = -cur_min[t];
            iscale_out[b0 + t] = flat[t] ? 0.f : best_isc[t];
            min0_out[b0 + t] = best_off[t];
        }
    }
    return 0;
}

/* make_qx_quants(n, nmax, x, L, rmse_type=1, qw) for B blocks; qw NULL: weights x*x. mx: the
 * signed value of largest magnitude per block (1.0 for all-zero blocks), zero: those blocks.
 * Outputs as _ggml_search.make_qx_quants returns them: scale, iscale. */
CLONES
int qp_make_qx(const float *x, const float *qw, int n, int64_t B, int nmax, const float *mx,
               const unsigned char *zero, float *scale_out, float *iscale_out) {
    float slx[TILE], sl2[TILE], isc[TILE], scale[TILE], best[TILE], best_isc[TILE];
    const float lo = (float)-nmax, hi = (float)(nmax - 1);
    for (int64_t b0 = 0; b0 < B; b0 += TILE) {
        const int T = (int)(B - b0 < TILE ? B - b0 : TILE);
        int bad = 0;
        for (int i = 0; i < n; i++) {
            const float *xi = x + i * B + b0;
            for (int t = 0; t < T; t++) bad |= !(fabsf(xi[t]) <= FLT_MAX);
            if (qw) {
                const float *wi = qw + i * B + b0;
                for (int t = 0; t < T; t++) bad |= !(fabsf(wi[t]) <= FLT_MAX);
            }
        }
        if (bad) return 1;
        for (int step = -10; step <= 9; step++) {
            if (step == 0) continue;
            /* step -10 stands for the first candidate, iscale = -nmax/max */
            const float c = step == -10 ? lo : -((float)nmax + 0.1f * (float)step);
            for (int t = 0; t < T; t++) {
                isc[t] = c / mx[b0 + t];
                slx[t] = 0.f;
                sl2[t] = 0.f;
            }
            for (int i = 0; i < n; i++) {
                const float *xi = x + i * B + b0;
                const float *wi = qw ? qw + i * B + b0 : xi;
                for (int t = 0; t < T; t++) {
                    float wv = qw ? wi[t] : xi[t] * xi[t];
                    float l = clampf(rnd(xi[t] * isc[t]), lo, hi);
                    slx[t] += (wv * xi[t]) * l;
                    sl2[t] += (wv * l) * l;
                }
            }
            if (step == -10) {
                for (int t = 0; t < T; t++) {
                    scale[t] = sl2[t] != 0 ? slx[t] / sl2[t] : 0.f;
                    best[t] = scale[t] * slx[t];
                    best_isc[t] = isc[t];
                }
            } else {
                for (int t = 0; t < T; t++) {
                    if (slx[t] * slx[t] > best[t] * sl2[t] && sl2[t] > 0) {
                        float s = slx[t] / sl2[t];
                        scale[t] = s;
                        best[t] = s * slx[t];
                        best_isc[t] = isc[t];
                    }
                }
            }
        }
        for (int t = 0; t < T; t++) {
            scale_out[b0 + t] = zero[b0 + t] ? 0.f : scale[t];
            iscale_out[b0 + t] = zero[b0 + t] ? 0.f : best_isc[t];
        }
    }
    return 0;
}

/* The requantization loop of quantize_row_q*_K_ref / _impl: for sub-block k of `sub` values,
 * q = MAX(lo, MIN(hi, nearest_int((x + dm[k]) / ds[k]))) (dm NULL: x / ds[k]), with ggml's
 * nearest_int bit for bit (its wrapped result outside |v| < 2^22 included). Codes go to int8
 * storage; the caller reads unsigned types' codes (0..63) through a uint8 view. */
CLONES
void qp_round_k(const float *x, const float *ds, const float *dm, int64_t nsub, int sub,
                int lo, int hi, int8_t *q) {
    for (int64_t k = 0; k < nsub; k++) {
        const float d = ds[k], m = dm ? dm[k] : 0.f;
        const float *xk = x + k * sub;
        int8_t *qk = q + k * sub;
        for (int j = 0; j < sub; j++) {
            float v = dm ? (xk[j] + m) / d : xk[j] / d;
            float t = v + 12582912.f;
            int32_t i;
            memcpy(&i, &t, sizeof i);
            i = (i & 0x007fffff) - 0x00400000;
            i = i < lo ? lo : i;
            qk[j] = (int8_t)(i > hi ? hi : i);
        }
    }
}
