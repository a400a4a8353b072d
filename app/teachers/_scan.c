/* Reads the top-k lists out of a vLLM response body without building Python objects for them.
 *
 * scan(body, k, chat) finds every `"top_logprobs": [...]` value (completions) or `"content": [...]`
 * value (chat) in the JSON text, string-aware, so text that merely contains those bytes is skipped. It
 * reads each position's candidates ({"token_id:N": logprob} pairs, or chat's {"token", "logprob", ...}
 * objects), ranks them exactly as app/teachers/parsing_reference.py does (logprob descending, ties by id
 * ascending, logprobs at or below -9999 taken as -inf) and keeps k per position, padded with id -1 and
 * -inf. It returns (the body with each such list replaced by its ordinal, positions per list as int64,
 * chat's sampled ids int32 [P] and logprobs float32 [P], top-k ids int32 [P, k], logprobs float32 [P, k])
 * or None whenever anything is outside that narrow grammar (escapes in keys, non-digit ids, ids outside
 * int32, a repeated id in a position, numbers it cannot read exactly): the caller then parses the whole
 * body the plain way, which also owns every error message.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *data;
    size_t len;
    size_t cap;
} Buf;

static int buf_reserve(Buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    char *data = realloc(b->data, cap);
    if (!data) return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

static int buf_append(Buf *b, const void *src, size_t n) {
    if (buf_reserve(b, n)) return -1;
    memcpy(b->data + b->len, src, n);
    b->len += n;
    return 0;
}

typedef struct {
    int64_t id;
    double lp;
} Candidate;

typedef struct {
    const char *s;
    size_t n;
    size_t i;
} Cursor;

static void skip_ws(Cursor *c) {
    while (c->i < c->n) {
        char ch = c->s[c->i];
        if (ch != ' ' && ch != '\n' && ch != '\r' && ch != '\t') return;
        c->i++;
    }
}

static int peek(Cursor *c) { return c->i < c->n ? (unsigned char)c->s[c->i] : -1; }

static const double POW10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                               1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Reads a JSON number into *out, correctly rounded (as orjson and strtod do); 0 on success. */
static int read_number(Cursor *c, double *out) {
    size_t start = c->i;
    int negative = 0;
    uint64_t mantissa = 0;
    int digits = 0, exp10 = 0, exact = 1;
    if (peek(c) == '-') {
        negative = 1;
        c->i++;
    }
    int ch = peek(c);
    if (ch == '0') {
        c->i++;
    } else if (ch >= '1' && ch <= '9') {
        while ((ch = peek(c)) >= '0' && ch <= '9') {
            if (digits < 19) {
                mantissa = mantissa * 10 + (uint64_t)(ch - '0');
                if (mantissa) digits++;
            } else {
                exp10++;
                if (ch != '0') exact = 0;
            }
            c->i++;
        }
    } else {
        return -1;
    }
    if (peek(c) == '.') {
        c->i++;
        if (!((ch = peek(c)) >= '0' && ch <= '9')) return -1;
        while ((ch = peek(c)) >= '0' && ch <= '9') {
            if (digits < 19) {
                mantissa = mantissa * 10 + (uint64_t)(ch - '0');
                exp10--;
                if (mantissa) digits++;
            } else if (ch != '0') {
                exact = 0; /* more significant digits than the fast paths hold */
            }
            c->i++;
        }
    }
    if (peek(c) == 'e' || peek(c) == 'E') {
        c->i++;
        int sign = 1, e = 0;
        if (peek(c) == '+' || peek(c) == '-') {
            sign = peek(c) == '-' ? -1 : 1;
            c->i++;
        }
        if (!((ch = peek(c)) >= '0' && ch <= '9')) return -1;
        while ((ch = peek(c)) >= '0' && ch <= '9') {
            if (e < 100000) e = e * 10 + (ch - '0');
            c->i++;
        }
        exp10 += sign * e;
    }
    double value;
    if (!exact) {
        goto slow;
    }
    if (mantissa == 0) {
        value = 0.0;
    } else if (mantissa <= (1ULL << 53) && exp10 >= -22 && exp10 <= 22) {
        /* Both operands exact, so one IEEE operation rounds correctly (Clinger's fast path). */
        value = exp10 < 0 ? (double)mantissa / POW10[-exp10] : (double)mantissa * POW10[exp10];
    } else {
#if LDBL_MANT_DIG == 64
        /* mantissa < 2^64 and 10^|e| (|e| <= 27) are exact in the 64-bit long double, so the quotient is
         * correctly rounded to 64 bits; rounding that to 53 bits is correct unless it sits exactly on a
         * 53-bit halfway point, which goes to strtod. */
        if (exp10 < -27 || exp10 > 27) goto slow;
        long double p = 1.0L;
        for (int j = 0; j < (exp10 < 0 ? -exp10 : exp10); j++) p *= 10.0L;
        long double q = exp10 < 0 ? (long double)mantissa / p : (long double)mantissa * p;
        union {
            long double ld;
            struct {
                uint64_t mant;
                uint16_t se;
            } parts;
        } u;
        u.ld = q;
        if ((u.parts.mant & 0x7FF) == 0x400) goto slow;
        value = (double)q;
#else
        goto slow;
#endif
    }
    *out = negative ? -value : value;
    return 0;
slow : {
    size_t len = c->i - start;
    char tmp[512];
    if (len >= sizeof tmp) return -1;
    memcpy(tmp, c->s + start, len);
    tmp[len] = 0;
    char *end;
    double v = strtod(tmp, &end);
    if (end != tmp + len || isinf(v)) return -1;
    *out = v;
    return 0;
}
}

static const char KEY_PREFIX[] = "\"token_id:";
#define KEY_PREFIX_LEN 10

/* A `"token_id:N"` string (no escapes, N an int32 in plain digits) into *id. */
static int read_token_key(Cursor *c, int64_t *id) {
    if (c->n - c->i < KEY_PREFIX_LEN || memcmp(c->s + c->i, KEY_PREFIX, KEY_PREFIX_LEN) != 0) return -1;
    c->i += KEY_PREFIX_LEN;
    int negative = 0, digits = 0;
    int64_t value = 0;
    if (peek(c) == '-') {
        negative = 1;
        c->i++;
    }
    int ch;
    while ((ch = peek(c)) >= '0' && ch <= '9') {
        if (++digits > 11) return -1;
        value = value * 10 + (ch - '0');
        c->i++;
    }
    if (digits == 0 || peek(c) != '"') return -1;
    c->i++;
    if (negative) value = -value;
    if (value > INT32_MAX || value < INT32_MIN) return -1;
    *id = value;
    return 0;
}

/* A logprob as the reference path cleans it: at or below -9999 (chat's stand-in for -inf) is -inf. */
static int read_logprob(Cursor *c, double *lp) {
    if (read_number(c, lp)) return -1;
    if (*lp <= -9999.0) *lp = -INFINITY;
    return 0;
}

/* One `"token_id:N": number` pair of a completions top-k dict. */
static int read_pair(Cursor *c, Candidate *cand) {
    if (read_token_key(c, &cand->id)) return -1;
    skip_ws(c);
    if (peek(c) != ':') return -1;
    c->i++;
    skip_ws(c);
    return read_logprob(c, &cand->lp);
}

/* Past a JSON string starting at c's opening quote; start and len locate its raw (undecoded) bytes. */
static int read_raw_string(Cursor *c, size_t *start, size_t *len, int *escaped) {
    if (peek(c) != '"') return -1;
    size_t from = c->i + 1, at = from;
    *escaped = 0;
    for (;;) {
        const char *q = memchr(c->s + at, '"', c->n - at);
        if (!q) return -1;
        size_t end = (size_t)(q - c->s), back = 0;
        while (end - back > from && c->s[end - back - 1] == '\\') back++;
        if (back) *escaped = 1;
        if (back % 2 == 0) {
            *start = from;
            *len = end - from;
            c->i = end + 1;
            return 0;
        }
        at = end + 1;
    }
}

/* Past any JSON value (validated only as far as finding its end; orjson never sees it). */
static int skip_value(Cursor *c, int depth) {
    if (depth > 32) return -1;
    int ch = peek(c);
    size_t start, len;
    int escaped;
    double number;
    if (ch == '"') return read_raw_string(c, &start, &len, &escaped);
    if (ch == '{' || ch == '[') {
        int close = ch == '{' ? '}' : ']';
        c->i++;
        skip_ws(c);
        if (peek(c) == close) {
            c->i++;
            return 0;
        }
        for (;;) {
            if (close == '}') {
                if (read_raw_string(c, &start, &len, &escaped)) return -1;
                skip_ws(c);
                if (peek(c) != ':') return -1;
                c->i++;
                skip_ws(c);
            }
            if (skip_value(c, depth + 1)) return -1;
            skip_ws(c);
            if (peek(c) == ',') {
                c->i++;
                skip_ws(c);
                continue;
            }
            if (peek(c) != close) return -1;
            c->i++;
            return 0;
        }
    }
    static const char *const words[] = {"null", "true", "false"};
    for (int w = 0; w < 3; w++) {
        size_t wl = strlen(words[w]);
        if (c->n - c->i >= wl && memcmp(c->s + c->i, words[w], wl) == 0) {
            c->i += wl;
            return 0;
        }
    }
    return read_number(c, &number);
}

/* A chat logprob object {"token": "token_id:N", "logprob": x, ...}; with scratch (a content entry), its
 * "top_logprobs" candidates are appended there. Other keys ("bytes") are skipped; a repeated key fails. */
static int read_chat_object(Cursor *c, Candidate *self, Buf *scratch) {
    int seen_token = 0, seen_logprob = 0, seen_top = 0;
    if (peek(c) != '{') return -1;
    c->i++;
    skip_ws(c);
    if (peek(c) == '}') return -1;
    for (;;) {
        size_t start, len;
        int escaped;
        if (read_raw_string(c, &start, &len, &escaped) || escaped) return -1;
        const char *key = c->s + start;
        skip_ws(c);
        if (peek(c) != ':') return -1;
        c->i++;
        skip_ws(c);
        if (len == 5 && memcmp(key, "token", 5) == 0) {
            if (seen_token++ || read_token_key(c, &self->id)) return -1;
        } else if (len == 7 && memcmp(key, "logprob", 7) == 0) {
            if (seen_logprob++ || read_logprob(c, &self->lp)) return -1;
        } else if (scratch && len == 12 && memcmp(key, "top_logprobs", 12) == 0) {
            if (seen_top++) return -1;
            if (c->n - c->i >= 4 && memcmp(c->s + c->i, "null", 4) == 0) {
                c->i += 4;
            } else {
                if (peek(c) != '[') return -1;
                c->i++;
                skip_ws(c);
                if (peek(c) == ']') {
                    c->i++;
                } else {
                    for (;;) {
                        if (buf_reserve(scratch, sizeof(Candidate))) return -1;
                        if (read_chat_object(c, (Candidate *)(scratch->data + scratch->len), NULL)) return -1;
                        scratch->len += sizeof(Candidate);
                        skip_ws(c);
                        if (peek(c) == ',') {
                            c->i++;
                            skip_ws(c);
                            continue;
                        }
                        if (peek(c) != ']') return -1;
                        c->i++;
                        break;
                    }
                }
            }
        } else if (skip_value(c, 0)) {
            return -1;
        }
        skip_ws(c);
        if (peek(c) == ',') {
            c->i++;
            skip_ws(c);
            continue;
        }
        if (peek(c) != '}') return -1;
        c->i++;
        return seen_token && seen_logprob ? 0 : -1;
    }
}

/* a ranks before b: higher logprob, then lower id. */
static inline int before(const Candidate *a, const Candidate *b) {
    return a->lp > b->lp || (a->lp == b->lp && a->id < b->id);
}

/* Ranks one position's candidates and appends k ids and logprobs; -1 on a repeated id. */
static int emit_position(Candidate *cands, size_t count, Py_ssize_t k, Buf *ids, Buf *lps) {
    for (size_t a = 1; a < count; a++) {
        Candidate item = cands[a];
        size_t b = a;
        while (b > 0 && before(&item, &cands[b - 1])) {
            cands[b] = cands[b - 1];
            b--;
        }
        cands[b] = item;
    }
    for (size_t a = 1; a < count; a++) {
        for (size_t b = 0; b < a; b++) {
            if (cands[a].id == cands[b].id) return -1;
        }
    }
    if (buf_reserve(ids, (size_t)k * 4) || buf_reserve(lps, (size_t)k * 4)) return -2;
    int32_t *out_ids = (int32_t *)(ids->data + ids->len);
    float *out_lps = (float *)(lps->data + lps->len);
    for (Py_ssize_t r = 0; r < k; r++) {
        if ((size_t)r < count) {
            out_ids[r] = (int32_t)cands[r].id;
            out_lps[r] = (float)cands[r].lp;
        } else {
            out_ids[r] = -1;
            out_lps[r] = -INFINITY;
        }
    }
    ids->len += (size_t)k * 4;
    lps->len += (size_t)k * 4;
    return 0;
}

/* One `[ position, ... ]` list; appends its ranked rows and returns the number of positions, or -1. */
static Py_ssize_t read_list(Cursor *c, Py_ssize_t k, Buf *scratch, Buf *ids, Buf *lps) {
    Py_ssize_t positions = 0;
    c->i++; /* '[' */
    skip_ws(c);
    if (peek(c) == ']') {
        c->i++;
        return 0;
    }
    for (;;) {
        scratch->len = 0;
        if (c->n - c->i >= 4 && memcmp(c->s + c->i, "null", 4) == 0) {
            c->i += 4;
        } else if (peek(c) == '{') {
            c->i++;
            skip_ws(c);
            if (peek(c) == '}') {
                c->i++;
            } else {
                for (;;) {
                    if (buf_reserve(scratch, sizeof(Candidate))) return -1;
                    if (read_pair(c, (Candidate *)(scratch->data + scratch->len))) return -1;
                    scratch->len += sizeof(Candidate);
                    skip_ws(c);
                    if (peek(c) == ',') {
                        c->i++;
                        skip_ws(c);
                        continue;
                    }
                    if (peek(c) != '}') return -1;
                    c->i++;
                    break;
                }
            }
        } else {
            return -1;
        }
        if (emit_position((Candidate *)scratch->data, scratch->len / sizeof(Candidate), k, ids, lps)) return -1;
        positions++;
        skip_ws(c);
        if (peek(c) == ',') {
            c->i++;
            skip_ws(c);
            continue;
        }
        if (peek(c) != ']') return -1;
        c->i++;
        return positions;
    }
}

/* One chat `"content": [entry, ...]` list: sampled ids and logprobs plus ranked rows; positions or -1. */
static Py_ssize_t read_content(Cursor *c, Py_ssize_t k, Buf *scratch, Buf *ids, Buf *lps, Buf *sampled_ids,
                               Buf *sampled_lps) {
    Py_ssize_t positions = 0;
    c->i++; /* '[' */
    skip_ws(c);
    if (peek(c) == ']') {
        c->i++;
        return 0;
    }
    for (;;) {
        Candidate self;
        scratch->len = 0;
        if (read_chat_object(c, &self, scratch)) return -1;
        int32_t id32 = (int32_t)self.id;
        float lp32 = (float)self.lp;
        if (buf_append(sampled_ids, &id32, 4) || buf_append(sampled_lps, &lp32, 4)) return -1;
        if (emit_position((Candidate *)scratch->data, scratch->len / sizeof(Candidate), k, ids, lps)) return -1;
        positions++;
        skip_ws(c);
        if (peek(c) == ',') {
            c->i++;
            skip_ws(c);
            continue;
        }
        if (peek(c) != ']') return -1;
        c->i++;
        return positions;
    }
}

/* scan(body, k, chat): see the top of this file; chat reads `"content": [...]` lists instead. */
static PyObject *scan(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer view;
    Py_ssize_t k;
    int chat;
    if (!PyArg_ParseTuple(args, "y*np", &view, &k, &chat)) return NULL;
    if (k < 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "k must be >= 0");
        return NULL;
    }
    const char *key = chat ? "content" : "top_logprobs";
    size_t key_len = strlen(key);
    const char *s = view.buf;
    size_t n = (size_t)view.len;
    Buf out = {0}, counts = {0}, ids = {0}, lps = {0}, scratch = {0}, sampled_ids = {0}, sampled_lps = {0};
    PyObject *result = NULL;
    int ok = 0;
    size_t copied = 0, i = 0;
    int64_t lists = 0;
    if (buf_reserve(&out, n + 1)) goto done; /* ordinals are shorter than the lists they replace */
    for (;;) {
        const char *quote = memchr(s + i, '"', n - i);
        if (!quote) break;
        Cursor c = {s, n, (size_t)(quote - s)};
        size_t start, len;
        int escaped;
        if (read_raw_string(&c, &start, &len, &escaped)) goto done;
        i = c.i;
        if (len != key_len || memcmp(s + start, key, key_len) != 0) continue;
        skip_ws(&c);
        if (peek(&c) != ':') continue; /* a string value, not a key */
        c.i++;
        skip_ws(&c);
        if (peek(&c) != '[') {
            if (chat && peek(&c) == '"') continue; /* the message's own "content" */
            if (n - c.i >= 4 && memcmp(s + c.i, "null", 4) == 0) {
                i = c.i + 4;
                continue;
            }
            goto done; /* anything else could pass for an ordinal once the lists are replaced */
        }
        size_t value_start = c.i;
        Py_ssize_t positions = chat ? read_content(&c, k, &scratch, &ids, &lps, &sampled_ids, &sampled_lps)
                                    : read_list(&c, k, &scratch, &ids, &lps);
        if (positions < 0) goto done;
        int64_t p64 = positions;
        if (buf_append(&counts, &p64, sizeof p64)) goto done;
        if (buf_append(&out, s + copied, value_start - copied)) goto done;
        char ordinal[24];
        int written = snprintf(ordinal, sizeof ordinal, "%lld", (long long)lists);
        if (buf_append(&out, ordinal, (size_t)written)) goto done;
        lists++;
        copied = i = c.i;
    }
    if (buf_append(&out, s + copied, n - copied)) goto done;
    ok = 1;
done:
    if (ok) {
        Buf *parts[] = {&counts, &sampled_ids, &sampled_lps, &ids, &lps};
        PyObject *items[6] = {PyBytes_FromStringAndSize(out.data, (Py_ssize_t)out.len)};
        for (int p = 0; p < 5; p++) {
            items[p + 1] = PyByteArray_FromStringAndSize(parts[p]->data ? parts[p]->data : "", (Py_ssize_t)parts[p]->len);
        }
        int complete = 1;
        for (int p = 0; p < 6; p++) complete = complete && items[p];
        if (complete) result = PyTuple_Pack(6, items[0], items[1], items[2], items[3], items[4], items[5]);
        for (int p = 0; p < 6; p++) Py_XDECREF(items[p]);
    } else if (!PyErr_Occurred()) {
        result = Py_None;
        Py_INCREF(result);
    }
    Buf *all[] = {&out, &counts, &ids, &lps, &scratch, &sampled_ids, &sampled_lps};
    for (int p = 0; p < 7; p++) free(all[p]->data);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS,
     "scan(body, k, chat) -> (stripped_body, counts, sampled_ids, sampled_logprobs, ids, logprobs) or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_scan", "Top-k list scanner for vLLM bodies.", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__scan(void) { return PyModule_Create(&module); }
