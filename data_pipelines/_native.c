/* Compiled inner loops of the data pipeline's filters (built by `pip install`, optional: every caller keeps an
 * exact numpy path for an install without a C compiler).
 *
 * langid_walk: py3langid's byte walk through its Aho-Corasick automaton and the feature counts of each text, in
 * the order a Python Counter would hold them (first occurrence). numpy does the walk in `depth` vectorised
 * passes and the counting with ufunc.at, about 40 ms of the 0.47 MB benchmark corpus; here it is one pass over
 * the bytes.
 *
 * langid_scores: the naive-Bayes product of every text, summed in the order of OpenBLAS's sgemv_n kernels (the
 * SkylakeX or the Haswell/Zen ones), which numpy's `@` calls: py3langid's bits, without gathering each text's
 * rows of the 57 MB table first (langid_fast checks the bits against numpy's at load and uses it only then).
 *
 * gopher_ngrams: the Gopher repetition n-gram statistics of one text (the most frequent n-gram's characters,
 * the characters of n-grams repeating an earlier one): str.split()'s words, n-grams keyed exactly (hashed,
 * then compared word by word), the reference rules walked position by position.
 *
 * gopher_quality: the counts GopherQuality's rules compare (words stripped of punctuation, their lengths, words
 * with a letter, stop words, '#' and ellipses, bullet and ellipsis lines) in one pass over the text, with
 * str.split / str.strip / str.isspace / re's \w and \d semantics (tested against the Python path).
 *
 * markers_in: which of up to 64 literal substrings a text contains, in one pass (the PII secret rules' markers:
 * 23 `in` tests, each a scan of the whole text, were half of that block).
 *
 * gopher_lines: GopherRepetition's paragraph and line counts (pieces between runs of 2+ newlines of the stripped
 * text that are not blank; lines that are not empty or blank; each with the ones repeating an earlier one and
 * their characters), exact: hashed, then compared character by character.
 *
 * fineweb_counts: FineWebFilter's line counts (stripped lines with content, ending with a stop string, short, their
 * characters, those of lines repeating an earlier one) and the word count.
 *
 * c4_lines: C4Filter's line rules for a text with no character whose lower case is ASCII (U+0130, U+212A), and
 * citations removed in Latin-1 texts: the decision, or the kept text and the removed lines per reason; None for
 * any other text, which the Python path then judges.
 *
 * pii_candidates: whether each of PII's candidate patterns (email, IPv4, IPv6, phone) occurs in a text, in one
 * pass, as the regular expressions' search finds them.
 *
 * normalize_unchanged: Normalize._unchanged in one pass (no suspect character, no pair of blanks or blank beside
 * a line break, no run of line breaks past the limit, no whitespace at either end).
 *
 * find_folded, book_lines, book_join: the books reader's passes over a whole book (the footer's word in either case,
 * the lines and their right-stripped lengths, the kept paragraphs written as one str), as gutenberg.py's Python
 * path gives them.
 *
 * utf8_len: a str's length in UTF-8, counted (every stage's byte counts; encoding a copy was most of a book's).
 *
 * Only the CPython buffer protocol and str API are used (no numpy headers): the build needs only a C compiler.
 */
#define NATIVE_VERSION 5 /* data_pipelines/native.py's VERSION */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* a str read as its code units (ready first: see ready) */
typedef struct {
    int kind;
    const void *data;
    Py_ssize_t length;
} Text;

/* strings made by the legacy (wchar) API are not ready before Python 3.12: every str read here is made ready */
static inline int
ready(PyObject *s)
{
#if PY_VERSION_HEX < 0x030C0000
    return PyUnicode_READY(s);
#else
    (void)s;
    return 0;
#endif
}

static inline Text
text_of(PyObject *s)
{
    return (Text){PyUnicode_KIND(s), PyUnicode_DATA(s), PyUnicode_GET_LENGTH(s)};
}

static inline Py_UCS4
at(const Text *t, Py_ssize_t i)
{
    return PyUnicode_READ(t->kind, t->data, i);
}

/* `widest`, or the widest character of t[a:e] if that is wider, as far as a str's kind goes (a str is of the kind
 * of its widest character): the scan stops once nothing in t can make it wider */
static Py_UCS4
widest_of(const Text *t, Py_ssize_t a, Py_ssize_t e, Py_UCS4 widest)
{
    const Py_UCS4 enough = t->kind == PyUnicode_1BYTE_KIND ? 0x80 : t->kind == PyUnicode_2BYTE_KIND ? 0x100 : 0x10000;
    if (widest >= enough)
        return widest;
    if (t->kind == PyUnicode_1BYTE_KIND) { /* only whether a byte >= 0x80 is there matters: 8 at a time */
        const unsigned char *c = t->data;
        for (Py_ssize_t i = a; i < e; i += 8) {
            uint64_t x = 0;
            memcpy(&x, c + i, e - i < 8 ? (size_t)(e - i) : 8);
            if (x & 0x8080808080808080ULL)
                return 0xFF;
        }
        return widest;
    }
    for (Py_ssize_t i = a; i < e && widest < enough; i++) {
        const Py_UCS4 c = at(t, i);
        widest = c > widest ? c : widest;
    }
    return widest;
}

/* t[a:e] written into `out` (made wide enough) from position pos; returns the position after it */
static Py_ssize_t
write_range(PyObject *out, Py_ssize_t pos, const Text *t, Py_ssize_t a, Py_ssize_t e)
{
    const int kind = PyUnicode_KIND(out);
    char *data = PyUnicode_DATA(out);
    if (kind == t->kind) {
        memcpy(data + pos * kind, (const char *)t->data + a * kind, (size_t)(e - a) * kind);
        return pos + e - a;
    }
    for (Py_ssize_t i = a; i < e; i++)
        PyUnicode_WRITE(kind, data, pos++, at(t, i));
    return pos;
}

static int
get_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize, const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    if (view->itemsize != itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: items of %zd bytes, expected %zd", what, view->itemsize, itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(langid_walk_doc,
"langid_walk(data, ends, nextmove, states, feats, counts, bounds, scratch, depth) -> int\n\n"
"Walk each text of `data` (uint8; text i ends at ends[i], int64) through the automaton from the start state:\n"
"state = nextmove[rowbase + byte] (int32) where states[2 * state] is the state's row base and\n"
"states[2 * state + 1] its feature (-1: none): one int32 pair per state, so the feature of the state a byte\n"
"reaches and the row the next byte reads share a cache line. Text i's\n"
"distinct features go to feats[bounds[i]:bounds[i+1]] (int32) in first-occurrence order, their counts to the\n"
"same slots of counts (int32). scratch (int32, one per feature) must be zero and is zero again on return.\n"
"`depth` is the automaton's trie depth: the state after a byte depends on the last `depth` bytes only, so the\n"
"walk runs as independent streams started depth - 1 bytes early, whose cache misses overlap.\n"
"Returns bounds[-1], the number of entries written.");

#define STREAMS 16

typedef struct {
    int64_t pos, end, record_from, doc_end, doc;
    int64_t state;
} Stream;

static PyObject *
langid_walk(PyObject *self, PyObject *args)
{
    PyObject *o[8];
    Py_buffer b[8];
    static const Py_ssize_t itemsize[8] = {1, 8, 4, 4, 4, 4, 8, 4};
    static const int writable[8] = {0, 0, 0, 0, 1, 1, 1, 1};
    static const char *names[8] = {"data", "ends", "nextmove", "states", "feats", "counts", "bounds", "scratch"};
    int got = 0, depth = 0;
    long long written = -1;
    const char *error = NULL;
    int32_t *at = NULL; /* the feature at every byte of data (-1: none) */

    if (!PyArg_ParseTuple(args, "OOOOOOOOi", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &depth))
        return NULL;
    if (depth < 1) {
        PyErr_SetString(PyExc_ValueError, "depth must be at least 1");
        return NULL;
    }
    for (; got < 8; got++)
        if (get_buffer(o[got], &b[got], writable[got], itemsize[got], names[got]) < 0)
            goto done;

    const uint8_t *data = b[0].buf;
    const int64_t *ends = b[1].buf;
    const int32_t *nextmove = b[2].buf, *states = b[3].buf;
    int32_t *feats = b[4].buf, *counts = b[5].buf, *scratch = b[7].buf;
    int64_t *bounds = b[6].buf;
    const Py_ssize_t n_data = b[0].len, n_docs = b[1].len / 8, n_next = b[2].len / 4, n_states = b[3].len / 8;
    const Py_ssize_t n_feats = b[7].len / 4, n_out = b[4].len / 4;
    if (b[3].len % 8 || b[5].len != b[4].len || b[6].len / 8 != n_docs + 1) {
        error = "the tables or output arrays do not fit together";
        goto done;
    }
    for (Py_ssize_t d = 0; d < n_docs; d++)
        if (ends[d] < (d ? ends[d - 1] : 0) || ends[d] > n_data) {
            error = "ends must be non-decreasing offsets into data";
            goto done;
        }
    if (n_docs == 0 ? n_data != 0 : ends[n_docs - 1] != n_data) {
        error = "the last of ends must be the length of data";
        goto done;
    }
    if (n_docs == 0) {
        bounds[0] = 0;
        written = 0;
        goto done;
    }
    at = PyMem_RawMalloc((n_data + 1) * sizeof(int32_t));
    if (!at) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    /* 1. the feature at each byte: the bytes cut into streams walked in lock-step; a stream starts at a text's
     * start or depth - 1 bytes before its first byte (those only warm the state up), and restarts at each
     * text's start, so every position gets the state of its own text's walk */
    Stream st[STREAMS];
    int n_streams = n_data >= STREAMS * 256 ? STREAMS : 1;
    for (int k = 0; k < n_streams; k++) {
        const int64_t from = n_data * k / n_streams, to = n_data * (k + 1) / n_streams;
        Py_ssize_t lo = 0, hi = n_docs - 1; /* the text holding `from`: the first whose end is past it */
        while (lo < hi) {
            const Py_ssize_t mid = (lo + hi) / 2;
            if (ends[mid] > from)
                hi = mid;
            else
                lo = mid + 1;
        }
        const int64_t doc_start = lo ? ends[lo - 1] : 0;
        const int64_t warm = from - (depth - 1) > doc_start ? from - (depth - 1) : doc_start;
        st[k] = (Stream){warm, to, from, ends[lo], lo, 0};
    }
    int active = n_streams;
    while (active && !error) {
        active = 0;
        for (int k = 0; k < n_streams; k++) {
            Stream *s = &st[k];
            if (s->pos >= s->end)
                continue;
            active++;
            while (s->pos == s->doc_end) { /* a new text (empty ones skipped): the start state */
                s->state = 0;
                s->doc++;
                s->doc_end = ends[s->doc];
            }
            const int64_t i = (int64_t)states[2 * s->state] + data[s->pos];
            if (i < 0 || i >= n_next) {
                error = "a rowbase entry points outside nextmove";
                break;
            }
            const int64_t state = nextmove[i];
            if (state < 0 || state >= n_states) {
                error = "a nextmove entry is not a state";
                break;
            }
            s->state = state;
            if (s->pos >= s->record_from) {
                const int32_t f = states[2 * state + 1];
                if (f >= n_feats) {
                    error = "an output entry is not a feature";
                    break;
                }
                at[s->pos] = f < 0 ? -1 : f;
            }
            s->pos++;
        }
    }
    /* 2. per text, its distinct features in first-occurrence order and their counts */
    int64_t pos = 0, k = 0;
    for (Py_ssize_t doc = 0; doc < n_docs && !error; doc++) {
        const int64_t end = ends[doc], first = k;
        bounds[doc] = k;
        for (; pos < end; pos++) {
            const int32_t f = at[pos];
            if (f < 0)
                continue;
            if (scratch[f] == 0) {
                if (k >= n_out) {
                    error = "feats is too short (it needs an entry per byte of data)";
                    break;
                }
                feats[k++] = f;
            }
            scratch[f]++;
        }
        for (int64_t j = first; j < k; j++) {
            counts[j] = scratch[feats[j]];
            scratch[feats[j]] = 0;
        }
    }
    if (!error)
        bounds[n_docs] = k;
    written = k;
    Py_END_ALLOW_THREADS
done:
    PyMem_RawFree(at);
    for (int i = 0; i < got; i++)
        PyBuffer_Release(&b[i]);
    if (error) {
        PyErr_SetString(PyExc_ValueError, error);
        return NULL;
    }
    if (written < 0)
        return NULL;
    return PyLong_FromLongLong(written);
}

/* ------------------------------------------------------------------------------------------ gopher_ngrams */
typedef struct {
    uint64_t hash;
    int32_t first; /* first position (word index or n-gram start); -1: empty slot */
    int32_t count;
} Slot;

typedef struct {
    Slot *slots;
    size_t mask;
} Table;

static inline uint64_t
mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static int
table_init(Table *t, Py_ssize_t items)
{
    size_t size = 16;
    while (size < (size_t)items * 2)
        size <<= 1;
    t->slots = PyMem_RawMalloc(size * sizeof(Slot));
    if (!t->slots)
        return -1;
    t->mask = size - 1;
    return 0;
}

static void
table_clear(Table *t)
{
    for (size_t i = 0; i <= t->mask; i++)
        t->slots[i].first = -1;
}

typedef struct {
    int kind;
    const char *data;          /* the text's code units */
    const Py_ssize_t *start;   /* word i: code points start[i] .. start[i] + len[i] */
    const Py_ssize_t *len;
    const int32_t *id;         /* the word's id: the index of its first occurrence */
} Words;

static inline int
same_word(const Words *w, Py_ssize_t a, Py_ssize_t b)
{
    return w->len[a] == w->len[b] &&
           memcmp(w->data + w->start[a] * w->kind, w->data + w->start[b] * w->kind, (size_t)(w->len[a] * w->kind)) == 0;
}

/* the slot of the key at position `pos` (a word when n == 0, else the n-gram of word ids starting there),
 * inserted with count 0 if absent; *fresh tells which */
static inline Slot *
table_find(Table *t, const Words *w, Py_ssize_t pos, int n, uint64_t hash, int *fresh)
{
    size_t i = (size_t)hash & t->mask;
    for (;;) {
        Slot *s = &t->slots[i];
        if (s->first < 0) {
            s->hash = hash;
            s->first = (int32_t)pos;
            s->count = 0;
            *fresh = 1;
            return s;
        }
        if (s->hash == hash && (n == 0 ? same_word(w, s->first, pos)
                                       : memcmp(w->id + s->first, w->id + pos, (size_t)n * sizeof(int32_t)) == 0)) {
            *fresh = 0;
            return s;
        }
        i = (i + 1) & t->mask;
    }
}

static int
parse_ns(PyObject *seq, int *ns, int *count, const char *what)
{
    PyObject *fast = PySequence_Fast(seq, what);
    if (!fast)
        return -1;
    Py_ssize_t m = PySequence_Fast_GET_SIZE(fast);
    if (m > 64) {
        Py_DECREF(fast);
        PyErr_Format(PyExc_ValueError, "%s: at most 64 n-gram sizes", what);
        return -1;
    }
    for (Py_ssize_t i = 0; i < m; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
        if (v < 1 || v > 1000) { /* gopher.MAX_NGRAM is lower */
            Py_DECREF(fast);
            PyErr_Format(PyExc_ValueError, "%s: n-gram size %ld, expected 1 to 1000", what, v);
            return -1;
        }
        ns[i] = (int)v;
    }
    *count = (int)m;
    Py_DECREF(fast);
    return 0;
}

PyDoc_STRVAR(gopher_ngrams_doc,
"gopher_ngrams(text, top_ns, dup_ns) -> (number of words, [top chars per n of top_ns], [dup chars per n])\n\n"
"The words are text.split()'s. For n of top_ns: the characters of the most frequent n-gram (its words joined by\n"
"one space; ties: the first seen) times its count. For n of dup_ns: the characters of n-grams equal to one seen\n"
"earlier, walking the positions in order and skipping the n - 1 after each repeat (Gopher's rule). 0 where the\n"
"text has fewer than n words.");

static PyObject *
gopher_ngrams(PyObject *self, PyObject *args)
{
    PyObject *text, *top_seq, *dup_seq;
    int top_ns[64], dup_ns[64], n_top = 0, n_dup = 0;
    if (!PyArg_ParseTuple(args, "UOO", &text, &top_seq, &dup_seq))
        return NULL;
    if (parse_ns(top_seq, top_ns, &n_top, "top_ns") < 0 || parse_ns(dup_seq, dup_ns, &n_dup, "dup_ns") < 0)
        return NULL;
    if (ready(text) < 0)
        return NULL;
    const int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    const Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    if (length >= INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "text of 2**31 characters or more");
        return NULL;
    }
    const Py_ssize_t cap = length / 2 + 1; /* at most this many words */
    Py_ssize_t *start = PyMem_RawMalloc(cap * sizeof(Py_ssize_t)), *len = PyMem_RawMalloc(cap * sizeof(Py_ssize_t));
    int64_t *prefix = PyMem_RawMalloc((cap + 1) * sizeof(int64_t));
    int32_t *id = PyMem_RawMalloc(cap * sizeof(int32_t));
    long long tops[64] = {0}, dups[64] = {0};
    Table table = {NULL, 0};
    uint64_t *gh = NULL;
    int32_t *slot_of = NULL, *cand = NULL, *kept_slot = NULL;
    Py_ssize_t n_words = 0;
    PyObject *result = NULL;
    if (!start || !len || !prefix || !id) {
        PyErr_NoMemory();
        goto done;
    }
    /* str.split(): runs of Py_UNICODE_ISSPACE separate words; each word hashed (FNV-1a) while it is scanned */
    uint64_t *word_hash = PyMem_RawMalloc(cap * sizeof(uint64_t));
    if (!word_hash) {
        PyErr_NoMemory();
        goto done;
    }
#define SPLIT(TYPE)                                                                                           \
    do {                                                                                                      \
        const TYPE *chars = (const TYPE *)data;                                                               \
        for (Py_ssize_t i = 0; i < length;) {                                                                 \
            while (i < length && Py_UNICODE_ISSPACE(chars[i]))                                                \
                i++;                                                                                          \
            if (i >= length)                                                                                  \
                break;                                                                                        \
            uint64_t h = 1469598103934665603ULL;                                                              \
            Py_ssize_t j = i;                                                                                 \
            while (j < length && !Py_UNICODE_ISSPACE(chars[j]))                                               \
                h = (h ^ chars[j++]) * 1099511628211ULL;                                                      \
            start[n_words] = i;                                                                               \
            len[n_words] = j - i;                                                                             \
            word_hash[n_words++] = mix64(h);                                                                  \
            i = j;                                                                                            \
        }                                                                                                     \
    } while (0)
    if (kind == PyUnicode_1BYTE_KIND)
        SPLIT(Py_UCS1);
    else if (kind == PyUnicode_2BYTE_KIND)
        SPLIT(Py_UCS2);
    else
        SPLIT(Py_UCS4);
#undef SPLIT
    prefix[0] = 0;
    for (Py_ssize_t i = 0; i < n_words; i++)
        prefix[i + 1] = prefix[i] + len[i];
    gh = PyMem_RawMalloc((n_words + 1) * sizeof(uint64_t));
    slot_of = PyMem_RawMalloc((n_words + 1) * sizeof(int32_t));
    cand = PyMem_RawMalloc((n_words + 1) * sizeof(int32_t));
    kept_slot = PyMem_RawMalloc((n_words + 1) * sizeof(int32_t));
    if (!gh || !slot_of || !cand || !kept_slot || table_init(&table, n_words) < 0) {
        PyMem_RawFree(word_hash);
        PyErr_NoMemory();
        goto done;
    }
    table_clear(&table);
    Words w = {kind, (const char *)data, start, len, id};
    /* word ids: the index of each word's first occurrence */
    for (Py_ssize_t i = 0; i < n_words; i++) {
        int fresh;
        id[i] = table_find(&table, &w, i, 0, word_hash[i], &fresh)->first;
    }
    PyMem_RawFree(word_hash);
    table_clear(&table);
    int max_n = 0;
    for (int t = 0; t < n_top; t++)
        max_n = top_ns[t] > max_n ? top_ns[t] : max_n;
    for (int t = 0; t < n_dup; t++)
        max_n = dup_ns[t] > max_n ? dup_ns[t] : max_n;
    /* Level by level, over only the positions that can repeat: an n-gram occurring twice has its (n-1)-gram
     * occurring twice at the same places. cand[0 .. n_cand) are the positions whose (n-1)-gram repeats, in
     * order (all of them at level 1); gh[p] is the hash of the n-gram at p, extended by one word per level. */
    Py_ssize_t n_cand = 0;
    if (max_n >= 1 && n_words >= 1) {
        /* level 1 needs no table: a word's id names it, so slot_of[id] counts it (and marks it seen, below) */
        int32_t *count = slot_of;
        for (Py_ssize_t p = 0; p < n_words; p++)
            count[p] = 0;
        int32_t best = 1;
        for (Py_ssize_t p = 0; p < n_words; p++)
            if (++count[id[p]] > best)
                best = count[id[p]];
        Py_ssize_t best_pos = 0;
        if (best > 1)
            while (count[id[best_pos]] != best)
                best_pos++;
        for (int t = 0; t < n_top; t++)
            if (top_ns[t] == 1)
                tops[t] = (long long)len[best_pos] * best;
        for (Py_ssize_t p = 0; p < n_words; p++)
            if (count[id[p]] > 1) {
                cand[n_cand++] = (int32_t)p;
                gh[p] = mix64((uint64_t)n_words ^ ((uint64_t)(uint32_t)id[p] + 0x9e3779b97f4a7c15ULL));
            }
        for (int t = 0; t < n_dup; t++) {
            if (dup_ns[t] != 1)
                continue;
            long long chars = 0; /* n = 1: no positions to skip after a repeat */
            for (Py_ssize_t c = 0; c < n_cand; c++) {
                int32_t *seen = &count[id[cand[c]]];
                if (*seen < 0)
                    chars += len[cand[c]];
                else
                    *seen = -1;
            }
            dups[t] = chars;
        }
    }
    for (int n = 2; n <= max_n && n <= n_words; n++) {
        const Py_ssize_t last = n_words - n; /* the last position with an n-gram */
        while (n_cand > 0 && cand[n_cand - 1] > last)
            n_cand--;
        int32_t best = 1; /* no n-gram repeats: each is a top one, and the first seen wins */
        Py_ssize_t best_pos = 0;
        for (Py_ssize_t c = 0; c < n_cand; c++) {
            const Py_ssize_t p = cand[c];
            gh[p] = mix64(gh[p] ^ ((uint64_t)(uint32_t)id[p + n - 1] + 0x9e3779b97f4a7c15ULL));
            int fresh;
            Slot *slot = table_find(&table, &w, p, n, gh[p], &fresh);
            slot_of[c] = (int32_t)(slot - table.slots);
            slot->count++;
            if (slot->count > best)
                best = slot->count;
        }
        if (best > 1) { /* the first candidate with the top count holds the first seen of the maximal n-grams */
            for (Py_ssize_t c = 0; c < n_cand; c++)
                if (table.slots[slot_of[c]].count == best) {
                    best_pos = cand[c];
                    break;
                }
        }
        for (int t = 0; t < n_top; t++)
            if (top_ns[t] == n)
                tops[t] = (long long)(prefix[best_pos + n] - prefix[best_pos] + n - 1) * best;
        /* the candidates of the next level: those whose n-gram repeats; `count` becomes "seen by the walk" */
        Py_ssize_t kept = 0;
        for (Py_ssize_t c = 0; c < n_cand; c++)
            if (table.slots[slot_of[c]].count > 1) {
                cand[kept] = cand[c];
                kept_slot[kept++] = slot_of[c];
            }
        for (int t = 0; t < n_dup; t++) {
            if (dup_ns[t] != n)
                continue;
            /* Gopher's walk: a repeat of an n-gram seen earlier counts and skips the n - 1 positions after it;
             * positions whose n-gram occurs once never meet it again, so walking the repeating ones (with the
             * same skips) counts the same */
            long long chars = 0;
            Py_ssize_t resume = 0;
            for (Py_ssize_t c = 0; c < kept; c++) {
                const Py_ssize_t p = cand[c];
                if (p < resume)
                    continue;
                Slot *slot = &table.slots[kept_slot[c]];
                if (slot->count < 0) {
                    chars += prefix[p + n] - prefix[p] + n - 1;
                    resume = p + n;
                } else {
                    slot->count = -1;
                }
            }
            dups[t] = chars;
        }
        /* empty the slots this level used (candidates only: the table is sized for all words) */
        for (Py_ssize_t c = 0; c < n_cand; c++)
            table.slots[slot_of[c]].first = -1;
        n_cand = kept;
    }
    PyObject *top_list = PyList_New(n_top), *dup_list = PyList_New(n_dup);
    int ok = top_list && dup_list;
    for (int t = 0; ok && t < n_top; t++) {
        PyObject *v = PyLong_FromLongLong(tops[t]);
        ok = v != NULL;
        PyList_SET_ITEM(top_list, t, v);
    }
    for (int t = 0; ok && t < n_dup; t++) {
        PyObject *v = PyLong_FromLongLong(dups[t]);
        ok = v != NULL;
        PyList_SET_ITEM(dup_list, t, v);
    }
    if (ok) {
        result = Py_BuildValue("nNN", n_words, top_list, dup_list);
    } else {
        Py_XDECREF(top_list);
        Py_XDECREF(dup_list);
    }
done:
    PyMem_RawFree(start);
    PyMem_RawFree(len);
    PyMem_RawFree(prefix);
    PyMem_RawFree(id);
    PyMem_RawFree(table.slots);
    PyMem_RawFree(gh);
    PyMem_RawFree(slot_of);
    PyMem_RawFree(cand);
    PyMem_RawFree(kept_slot);
    return result;
}

/* ------------------------------------------------------------------------------------------- gopher_lines */
/* how many of the spans (hashed in hash[]) repeat an earlier one, and their characters (find_duplicates) */
static int
count_repeats(const Words *w, const uint64_t *hash, Py_ssize_t n, long long *dups, long long *dup_chars)
{
    Table table;
    if (table_init(&table, n) < 0)
        return -1;
    table_clear(&table);
    *dups = *dup_chars = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int fresh;
        table_find(&table, w, i, 0, mix64(hash[i]), &fresh);
        if (!fresh) {
            (*dups)++;
            *dup_chars += w->len[i];
        }
    }
    PyMem_RawFree(table.slots);
    return 0;
}

/* the paragraphs (mode 0: pieces of [a, b) between runs of 2+ '\n') or lines (mode 1: pieces between '\n') that
 * are not blank, into start/len/hash; returns their number */
#define PIECES(TYPE)                                                                                           \
    static Py_ssize_t pieces_##TYPE(const TYPE *c, Py_ssize_t a, Py_ssize_t b, int lines, Py_ssize_t *start,  \
                                    Py_ssize_t *len, uint64_t *hash)                                          \
    {                                                                                                         \
        Py_ssize_t n = 0;                                                                                     \
        for (Py_ssize_t i = a; i <= b;) {                                                                     \
            Py_ssize_t j = i;                                                                                 \
            int blank = 1;                                                                                    \
            uint64_t h = 1469598103934665603ULL;                                                              \
            while (j < b && !(c[j] == '\n' && (lines || (j + 1 < b && c[j + 1] == '\n')))) {                 \
                if (blank && !Py_UNICODE_ISSPACE(c[j]))                                                       \
                    blank = 0;                                                                                \
                h = (h ^ c[j]) * 1099511628211ULL;                                                            \
                j++;                                                                                          \
            }                                                                                                 \
            if (!blank) {                                                                                     \
                start[n] = i;                                                                                 \
                len[n] = j - i;                                                                               \
                hash[n++] = h;                                                                                \
            }                                                                                                 \
            if (lines)                                                                                        \
                i = j + 1;                                                                                    \
            else {                                                                                            \
                while (j < b && c[j] == '\n')                                                                 \
                    j++;                                                                                      \
                i = j < b ? j : b + 1;                                                                        \
            }                                                                                                 \
        }                                                                                                     \
        return n;                                                                                             \
    }
PIECES(Py_UCS1)
PIECES(Py_UCS2)
PIECES(Py_UCS4)
#undef PIECES

PyDoc_STRVAR(gopher_lines_doc,
"gopher_lines(text) -> (paragraphs, repeated paragraphs, their characters, lines, repeated lines, their characters)\n\n"
"Paragraphs: the pieces of text.strip() between runs of two or more '\\n' that are not blank; lines: the pieces of\n"
"text.split('\\n') that are neither empty nor blank; a piece repeats if an equal one came before it.");

static PyObject *
gopher_lines(PyObject *self, PyObject *args)
{
    PyObject *text;
    if (!PyArg_ParseTuple(args, "U", &text))
        return NULL;
    if (ready(text) < 0)
        return NULL;
    const int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    const Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    const Py_ssize_t cap = length / 2 + 2;
    Py_ssize_t *start = PyMem_RawMalloc(cap * sizeof(Py_ssize_t)), *len = PyMem_RawMalloc(cap * sizeof(Py_ssize_t));
    uint64_t *hash = PyMem_RawMalloc(cap * sizeof(uint64_t));
    PyObject *result = NULL;
    long long counts[6] = {0};
    if (!start || !len || !hash) {
        PyErr_NoMemory();
        goto done;
    }
    Words w = {kind, (const char *)data, start, len, NULL};
    Py_ssize_t a = 0, b = length; /* text.strip() */
    while (a < b && Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, a)))
        a++;
    while (b > a && Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, b - 1)))
        b--;
    for (int lines = 0; lines < 2; lines++) {
        const Py_ssize_t from = lines ? 0 : a, to = lines ? length : b;
        Py_ssize_t n;
        if (!lines && a == b)
            n = 0; /* "".split(...) gives [""]: blank */
        else if (kind == PyUnicode_1BYTE_KIND)
            n = pieces_Py_UCS1((const Py_UCS1 *)data, from, to, lines, start, len, hash);
        else if (kind == PyUnicode_2BYTE_KIND)
            n = pieces_Py_UCS2((const Py_UCS2 *)data, from, to, lines, start, len, hash);
        else
            n = pieces_Py_UCS4((const Py_UCS4 *)data, from, to, lines, start, len, hash);
        counts[3 * lines] = n;
        if (count_repeats(&w, hash, n, &counts[3 * lines + 1], &counts[3 * lines + 2]) < 0) {
            PyErr_NoMemory();
            goto done;
        }
    }
    result = Py_BuildValue("LLLLLL", counts[0], counts[1], counts[2], counts[3], counts[4], counts[5]);
done:
    PyMem_RawFree(start);
    PyMem_RawFree(len);
    PyMem_RawFree(hash);
    return result;
}

/* ----------------------------------------------------------------------------------------- fineweb_counts */
PyDoc_STRVAR(fineweb_counts_doc,
"fineweb_counts(text, stop_strings, short_length) -> (lines, ending with a stop string, short, characters,\n"
"characters of repeated lines, words)\n\n"
"Over [line.strip() for line in non_empty_lines(text)]: how many end with one of stop_strings (a tuple of str),\n"
"how many have at most short_length characters, their characters, the characters of those equal to an earlier\n"
"one (find_duplicates); and len(text.split()).");

static PyObject *
fineweb_counts(PyObject *self, PyObject *args)
{
    PyObject *text, *stops;
    Py_ssize_t short_length;
    if (!PyArg_ParseTuple(args, "UO!n", &text, &PyTuple_Type, &stops, &short_length))
        return NULL;
    const Py_ssize_t n_stops = PyTuple_GET_SIZE(stops);
    for (Py_ssize_t k = 0; k < n_stops; k++) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(stops, k))) {
            PyErr_SetString(PyExc_TypeError, "stop_strings: a tuple of str");
            return NULL;
        }
        if (ready(PyTuple_GET_ITEM(stops, k)) < 0)
            return NULL;
    }
    if (ready(text) < 0)
        return NULL;
    Text t = text_of(text);
    const Py_ssize_t cap = t.length / 2 + 2;
    Py_ssize_t *start = PyMem_RawMalloc(cap * sizeof(Py_ssize_t)), *len = PyMem_RawMalloc(cap * sizeof(Py_ssize_t));
    uint64_t *hash = PyMem_RawMalloc(cap * sizeof(uint64_t));
    PyObject *result = NULL;
    long long lines = 0, punct = 0, shorts = 0, chars = 0, dups = 0, dup_chars = 0, words = 0;
    if (!start || !len || !hash) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i <= t.length;) {
        Py_ssize_t j = i;
        while (j < t.length && at(&t, j) != '\n')
            j++;
        Py_ssize_t a = i, b = j;
        i = j + 1;
        while (a < b && Py_UNICODE_ISSPACE(at(&t, a)))
            a++;
        while (b > a && Py_UNICODE_ISSPACE(at(&t, b - 1)))
            b--;
        if (a == b)
            continue;
        uint64_t h = 1469598103934665603ULL;
        for (Py_ssize_t k = a; k < b; k++)
            h = (h ^ at(&t, k)) * 1099511628211ULL;
        start[lines] = a;
        len[lines] = b - a;
        hash[lines++] = h;
        chars += b - a;
        shorts += b - a <= short_length;
        for (Py_ssize_t k = 0; k < n_stops; k++) {
            PyObject *stop = PyTuple_GET_ITEM(stops, k);
            const Py_ssize_t n = PyUnicode_GET_LENGTH(stop);
            if (n > b - a)
                continue;
            Py_ssize_t m = 0;
            while (m < n && at(&t, b - n + m) == PyUnicode_READ_CHAR(stop, m))
                m++;
            if (m == n) {
                punct++;
                break;
            }
        }
    }
    Words w = {t.kind, (const char *)t.data, start, len, NULL};
    if (count_repeats(&w, hash, lines, &dups, &dup_chars) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < t.length;) { /* str.split() */
        while (i < t.length && Py_UNICODE_ISSPACE(at(&t, i)))
            i++;
        if (i >= t.length)
            break;
        words++;
        while (i < t.length && !Py_UNICODE_ISSPACE(at(&t, i)))
            i++;
    }
    result = Py_BuildValue("LLLLLL", lines, punct, shorts, chars, dup_chars, words);
done:
    PyMem_RawFree(start);
    PyMem_RawFree(len);
    PyMem_RawFree(hash);
    return result;
}

/* ----------------------------------------------------------------------------------------- gopher_quality */
/* `needle` (a str) at position i of t */
static int
starts_with(const Text *t, Py_ssize_t i, Py_ssize_t end, PyObject *needle)
{
    const Py_ssize_t n = PyUnicode_GET_LENGTH(needle);
    if (n == 0 || i + n > end)
        return n == 0;
    const int kind = PyUnicode_KIND(needle);
    const void *data = PyUnicode_DATA(needle);
    for (Py_ssize_t k = 0; k < n; k++)
        if (at(t, i + k) != PyUnicode_READ(kind, data, k))
            return 0;
    return 1;
}

static inline int
in_set(Py_UCS4 c, const uint8_t *ascii, const Py_UCS4 *other, Py_ssize_t n_other)
{
    if (c < 128)
        return ascii[c];
    for (Py_ssize_t k = 0; k < n_other; k++)
        if (other[k] == c)
            return 1;
    return 0;
}

PyDoc_STRVAR(gopher_quality_doc,
"gopher_quality(text, punctuation, bullets, ascii_stop_words, stop_set, min_stop_words) -> tuple of ints\n\n"
"(words, characters in them, words with a letter, stop words found (counting stops at min_stop_words), '#',\n"
"'...', '\u2026', lines, bullet lines, ellipsis lines) as GopherQuality computes them: words are text.split()'s\n"
"stripped of `punctuation`, the empty ones left out; a word has a letter if a character of it is \\\\w but not\n"
"\\\\d or '_' (re's classes); a stop word is one whose lower() is in stop_set (ascii_stop_words: its ASCII\n"
"members, for the words that are ASCII); lines are text.split('\\\\n')'s that are not empty or whitespace; a\n"
"bullet line starts with one of `bullets` after leading whitespace, an ellipsis line ends with '...' or '\u2026'\n"
"before trailing whitespace.");

static PyObject *
gopher_quality(PyObject *self, PyObject *args)
{
    PyObject *text, *punct, *bullets, *ascii_stop, *stop_set;
    Py_ssize_t min_stop;
    if (!PyArg_ParseTuple(args, "UUO!O!On", &text, &punct, &PyTuple_Type, &bullets, &PyTuple_Type, &ascii_stop,
                          &stop_set, &min_stop))
        return NULL;
    const Py_ssize_t n_bullets = PyTuple_GET_SIZE(bullets), n_ascii_stop = PyTuple_GET_SIZE(ascii_stop);
    for (Py_ssize_t k = 0; k < n_bullets; k++)
        if (!PyUnicode_Check(PyTuple_GET_ITEM(bullets, k))) {
            PyErr_SetString(PyExc_TypeError, "bullets: a tuple of str");
            return NULL;
        }
    for (Py_ssize_t k = 0; k < n_ascii_stop; k++)
        if (!PyBytes_Check(PyTuple_GET_ITEM(ascii_stop, k))) {
            PyErr_SetString(PyExc_TypeError, "ascii_stop_words: a tuple of bytes");
            return NULL;
        }
    uint8_t ascii_punct[128] = {0};
    Py_UCS4 other_punct[64];
    Py_ssize_t n_other = 0;
    for (Py_ssize_t k = 0; k < PyUnicode_GET_LENGTH(punct); k++) {
        Py_UCS4 c = PyUnicode_READ_CHAR(punct, k);
        if (c < 128)
            ascii_punct[c] = 1;
        else if (n_other < 64)
            other_punct[n_other++] = c;
        else {
            PyErr_SetString(PyExc_ValueError, "punctuation: at most 64 non-ASCII characters");
            return NULL;
        }
    }
    if (ready(text) < 0 || ready(punct) < 0)
        return NULL;
    for (Py_ssize_t k = 0; k < n_bullets; k++)
        if (ready(PyTuple_GET_ITEM(bullets, k)) < 0)
            return NULL;
    Text t = text_of(text);
    long long words = 0, chars = 0, lettered = 0, stops = 0, hashes = 0, dots = 0, ellipses = 0;
    long long lines = 0, bullet_lines = 0, ellipsis_lines = 0;
    char lower[64];
    /* words */
    for (Py_ssize_t i = 0; i < t.length;) {
        while (i < t.length && Py_UNICODE_ISSPACE(at(&t, i)))
            i++;
        if (i >= t.length)
            break;
        Py_ssize_t j = i;
        while (j < t.length && !Py_UNICODE_ISSPACE(at(&t, j)))
            j++;
        Py_ssize_t a = i, b = j; /* str.strip(punctuation) */
        i = j;
        while (a < b && in_set(at(&t, a), ascii_punct, other_punct, n_other))
            a++;
        while (b > a && in_set(at(&t, b - 1), ascii_punct, other_punct, n_other))
            b--;
        if (a == b)
            continue;
        words++;
        chars += b - a;
        int letter = 0, ascii = 1;
        for (Py_ssize_t k = a; k < b; k++) {
            const Py_UCS4 c = at(&t, k);
            ascii &= c < 128;
            if (!letter && (c < 128 ? ((c | 32) >= 'a' && (c | 32) <= 'z') /* an ASCII letter */
                                    : Py_UNICODE_ISALNUM(c) && !Py_UNICODE_ISDECIMAL(c)))
                letter = 1;
        }
        lettered += letter;
        if (stops >= min_stop)
            continue;
        if (ascii && b - a <= (Py_ssize_t)sizeof(lower)) {
            const Py_ssize_t n = b - a;
            for (Py_ssize_t k = 0; k < n; k++) {
                const Py_UCS4 c = at(&t, a + k);
                lower[k] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
            }
            for (Py_ssize_t k = 0; k < n_ascii_stop; k++) {
                PyObject *w = PyTuple_GET_ITEM(ascii_stop, k);
                if (PyBytes_GET_SIZE(w) == n && memcmp(PyBytes_AS_STRING(w), lower, (size_t)n) == 0) {
                    stops++;
                    break;
                }
            }
        } else if (!ascii) { /* str.lower() and the set, as the Python path (full Unicode case mapping) */
            PyObject *word = PyUnicode_Substring(text, a, b);
            PyObject *low = word ? PyObject_CallMethod(word, "lower", NULL) : NULL;
            Py_XDECREF(word);
            if (!low)
                return NULL;
            const int found = PySequence_Contains(stop_set, low);
            Py_DECREF(low);
            if (found < 0)
                return NULL;
            stops += found;
        } /* an ASCII word longer than `lower` is longer than every ASCII stop word the caller passes */
    }
    /* '#', '...' (non-overlapping, as str.count), the ellipsis character */
    for (Py_ssize_t i = 0; i < t.length; i++) {
        const Py_UCS4 c = at(&t, i);
        if (c == '#')
            hashes++;
        else if (c == 0x2026)
            ellipses++;
        else if (c == '.' && i + 2 < t.length && at(&t, i + 1) == '.' && at(&t, i + 2) == '.') {
            dots++;
            i += 2;
        }
    }
    /* lines of text.split('\n') that are neither empty nor whitespace */
    for (Py_ssize_t i = 0; i <= t.length;) {
        Py_ssize_t j = i;
        while (j < t.length && at(&t, j) != '\n')
            j++;
        Py_ssize_t a = i, b = j;
        while (a < b && Py_UNICODE_ISSPACE(at(&t, a)))
            a++;
        if (a < b) {
            lines++;
            for (Py_ssize_t k = 0; k < n_bullets; k++)
                if (starts_with(&t, a, b, PyTuple_GET_ITEM(bullets, k))) {
                    bullet_lines++;
                    break;
                }
            while (b > a && Py_UNICODE_ISSPACE(at(&t, b - 1)))
                b--;
            if ((b - a >= 3 && at(&t, b - 1) == '.' && at(&t, b - 2) == '.' && at(&t, b - 3) == '.') ||
                at(&t, b - 1) == 0x2026)
                ellipsis_lines++;
        }
        i = j + 1;
    }
    return Py_BuildValue("LLLLLLLLLL", words, chars, lettered, stops, hashes, dots, ellipses, lines, bullet_lines,
                         ellipsis_lines);
}

/* --------------------------------------------------------------------------------------------- markers_in */
PyDoc_STRVAR(markers_in_doc,
"markers_in(text, markers) -> int\n\n"
"A bit mask of the markers (a tuple of at most 64 str) that occur in text: bit i is `markers[i] in text`.");

static PyObject *
markers_in(PyObject *self, PyObject *args)
{
    PyObject *text, *markers;
    if (!PyArg_ParseTuple(args, "UO!", &text, &PyTuple_Type, &markers))
        return NULL;
    const Py_ssize_t n = PyTuple_GET_SIZE(markers);
    if (n > 64) {
        PyErr_SetString(PyExc_ValueError, "markers: at most 64");
        return NULL;
    }
    if (ready(text) < 0)
        return NULL;
    /* one-character markers by their character (below 256; `wide` above), longer ones by a hash of their first
     * two characters: most positions of a text then have no candidate at all */
    uint64_t head[256] = {0}, wide = 0, found = 0;
    uint64_t pair[512] = {0};
    const uint64_t all = n == 64 ? ~0ULL : ((1ULL << n) - 1);
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *m = PyTuple_GET_ITEM(markers, j);
        if (!PyUnicode_Check(m)) {
            PyErr_SetString(PyExc_TypeError, "markers: a tuple of str");
            return NULL;
        }
        if (ready(m) < 0)
            return NULL;
        if (PyUnicode_GET_LENGTH(m) == 0) {
            found |= 1ULL << j; /* "" in text */
            continue;
        }
        const Py_UCS4 c = PyUnicode_READ_CHAR(m, 0);
        if (PyUnicode_GET_LENGTH(m) >= 2)
            pair[(c * 31 + PyUnicode_READ_CHAR(m, 1)) & 511] |= 1ULL << j;
        else if (c < 256)
            head[c] |= 1ULL << j;
        else
            wide |= 1ULL << j;
    }
    /* the markers' characters, one after another, as UCS4 */
    Py_ssize_t total = 0, offset[65];
    for (Py_ssize_t j = 0; j < n; j++) {
        offset[j] = total;
        total += PyUnicode_GET_LENGTH(PyTuple_GET_ITEM(markers, j));
    }
    offset[n] = total;
    Py_UCS4 *chars = PyMem_RawMalloc((size_t)(total + 1) * sizeof(Py_UCS4));
    if (!chars)
        return PyErr_NoMemory();
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *m = PyTuple_GET_ITEM(markers, j);
        for (Py_ssize_t k = 0; k < offset[j + 1] - offset[j]; k++)
            chars[offset[j] + k] = PyUnicode_READ_CHAR(m, k);
    }
    const int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    const Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    for (Py_ssize_t i = 0; i < length && found != all; i++) {
        const Py_UCS4 c = PyUnicode_READ(kind, data, i);
        uint64_t cand = (c < 256 ? head[c] : wide);
        if (i + 1 < length)
            cand |= pair[(c * 31 + PyUnicode_READ(kind, data, i + 1)) & 511];
        cand &= ~found;
        while (cand) {
            const int j = __builtin_ctzll(cand);
            cand &= cand - 1;
            const Py_UCS4 *m = chars + offset[j];
            const Py_ssize_t len = offset[j + 1] - offset[j];
            if (i + len > length || m[0] != c)
                continue;
            Py_ssize_t k = 1;
            while (k < len && PyUnicode_READ(kind, data, i + k) == m[k])
                k++;
            if (k == len)
                found |= 1ULL << j;
        }
    }
    PyMem_RawFree(chars);
    return PyLong_FromUnsignedLongLong(found);
}

/* ------------------------------------------------------------------------------------ normalize_unchanged */
PyDoc_STRVAR(normalize_unchanged_doc,
"normalize_unchanged(text, newline_run) -> bool\n\n"
"Normalize._unchanged: text is not empty, starts and ends with no whitespace, holds no character a step may\n"
"remove or replace other than ' ', '\\t' and '\\n' (controls, other whitespace, line breaks, U+200B, U+2060,\n"
"U+FEFF, surrogates), no two blanks in a row, no blank beside a '\\n', and no run of newline_run '\\n' (0: no\n"
"limit). Blanks are ' ' and '\\t'.");

static PyObject *
normalize_unchanged(PyObject *self, PyObject *args)
{
    PyObject *text;
    Py_ssize_t run_limit;
    if (!PyArg_ParseTuple(args, "Un", &text, &run_limit))
        return NULL;
    if (ready(text) < 0)
        return NULL;
    const int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    const Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    if (length == 0 || Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, 0)) ||
        Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, length - 1)))
        Py_RETURN_FALSE;
    Py_UCS4 prev = 0;
    Py_ssize_t newlines = 0;
    for (Py_ssize_t i = 0; i < length; i++) {
        const Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c == '\n') {
            if (prev == ' ' || prev == '\t' || (run_limit > 0 && ++newlines >= run_limit))
                Py_RETURN_FALSE;
        } else if (c == ' ' || c == '\t') {
            if (prev == ' ' || prev == '\t' || prev == '\n')
                Py_RETURN_FALSE;
            newlines = 0;
        } else {
            if (c < 0x20 || (c >= 0x7F && c <= 0x9F) || c == 0x200B || c == 0x2060 || c == 0xFEFF ||
                (c >= 0xD800 && c <= 0xDFFF) || Py_UNICODE_ISSPACE(c))
                Py_RETURN_FALSE;
            newlines = 0;
        }
        prev = c;
    }
    Py_RETURN_TRUE;
}

/* ---------------------------------------------------------------------------------------------- c4_lines */
/* which of the patterns (ASCII, at most 64; bit k: pats[k]) the ASCII-lowered line `low` (non-ASCII characters
 * as 0x80) holds, in one scan: head[c] has the bits of the patterns starting with byte c */
static uint64_t
held(const char *low, Py_ssize_t n, const char *const *pats, const Py_ssize_t *lens, const uint64_t *head,
     uint64_t empty)
{
    uint64_t found = empty;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t cand = head[(uint8_t)low[i]] & ~found;
        while (cand) {
            const int k = __builtin_ctzll(cand);
            cand &= cand - 1;
            if (i + lens[k] <= n && memcmp(low + i, pats[k], (size_t)lens[k]) == 0)
                found |= 1ULL << k;
        }
    }
    return found;
}

static int
count_removed(PyObject *removed, const char *reason)
{
    PyObject *key = PyUnicode_FromString(reason);
    if (!key)
        return -1;
    PyObject *old = PyDict_GetItemWithError(removed, key);
    long long n = old ? PyLong_AsLongLong(old) : 0;
    PyObject *value = (old || !PyErr_Occurred()) ? PyLong_FromLongLong(n + 1) : NULL;
    int rc = value ? PyDict_SetItem(removed, key, value) : -1;
    Py_DECREF(key);
    Py_XDECREF(value);
    return rc;
}

static inline int
is_closer(Py_UCS4 c)
{
    return c == '"' || c == '\'' || c == 0x201D || c == 0x2019 || c == ')' || c == ']';
}

PyDoc_STRVAR(c4_lines_doc,
"c4_lines(text, remove_citations, no_terminal_punct, min_words, max_word_length, lorem, javascript, curly,\n"
"policy, policies, min_sentences) -> None or (decision, text, removed)\n\n"
"C4Filter.apply's line rules (-1: a numeric rule off; policies: the lower-case ASCII policy substrings as\n"
"bytes). None if the text needs the Python path (U+0130 or U+212A, or a '[' while citations are removed in a text\n"
"that is not Latin-1). Else decision is a drop reason or None; text is the kept lines joined (None: the text as\n"
"it was); removed counts the removed lines per reason, in first-seen order; citations: whether a kept line lost\n"
"a citation.");

/* the end of the CITATION match at c[k] == '[' (`\\[\\d*\\]|\\[edit\\]|\\[citation needed\\]`, re.IGNORECASE) in
 * c[k:b], or 0. Latin-1 only: there \\d is [0-9] and a letter matches only its ASCII case twin */
static Py_ssize_t
citation_end(const Py_UCS1 *c, Py_ssize_t k, Py_ssize_t b)
{
    Py_ssize_t j = k + 1;
    while (j < b && c[j] >= '0' && c[j] <= '9')
        j++;
    if (j < b && c[j] == ']')
        return j + 1;
    static const char *words[2] = {"edit]", "citation needed]"};
    for (int w = 0; w < 2; w++) {
        const Py_ssize_t n = (Py_ssize_t)strlen(words[w]);
        if (k + 1 + n > b)
            continue;
        Py_ssize_t i = 0;
        while (i < n && (c[k + 1 + i] >= 'A' && c[k + 1 + i] <= 'Z' ? c[k + 1 + i] + 32 : c[k + 1 + i]) == words[w][i])
            i++;
        if (i == n)
            return k + 1 + n;
    }
    return 0;
}

static PyObject *
c4_lines(PyObject *self, PyObject *args)
{
    PyObject *text, *policies;
    int cite, terminal, lorem, js, curly, policy;
    Py_ssize_t min_words, max_word, min_sentences;
    if (!PyArg_ParseTuple(args, "UppnnppppO!n", &text, &cite, &terminal, &min_words, &max_word, &lorem, &js, &curly,
                          &policy, &PyTuple_Type, &policies, &min_sentences))
        return NULL;
    const Py_ssize_t n_policies = PyTuple_GET_SIZE(policies);
    if (n_policies > 62) {
        PyErr_SetString(PyExc_ValueError, "policies: at most 62");
        return NULL;
    }
    /* the patterns: 0 "lorem ipsum", 1 "javascript", then the policy substrings */
    const char *pats[64] = {"lorem ipsum", "javascript"};
    Py_ssize_t lens[64] = {11, 10};
    uint64_t head[256] = {0}, empty = 0, policy_bits = 0;
    for (Py_ssize_t k = 0; k < n_policies; k++) {
        PyObject *pat = PyTuple_GET_ITEM(policies, k);
        if (!PyBytes_Check(pat)) {
            PyErr_SetString(PyExc_TypeError, "policies: a tuple of bytes");
            return NULL;
        }
        pats[k + 2] = PyBytes_AS_STRING(pat);
        lens[k + 2] = PyBytes_GET_SIZE(pat);
        policy_bits |= 1ULL << (k + 2);
    }
    for (Py_ssize_t k = 0; k < n_policies + 2; k++) {
        if (lens[k] == 0)
            empty |= 1ULL << k; /* "" in line */
        else
            head[(uint8_t)pats[k][0]] |= 1ULL << k;
    }
    if (ready(text) < 0)
        return NULL;
    Text t = text_of(text);
    const int latin1 = t.kind == PyUnicode_1BYTE_KIND;
    int brackets = latin1 && memchr(t.data, '[', (size_t)t.length) != NULL;
    for (Py_ssize_t i = 0; i < t.length && !latin1; i++) { /* what the Python path judges: see the doc */
        const Py_UCS4 c = at(&t, i);
        if ((cite && c == '[') || c == 0x130 || c == 0x212A)
            Py_RETURN_NONE;
    }
    cite &= brackets;
    PyObject *removed = PyDict_New(), *result = NULL, *joined = NULL;
    char *low = PyMem_RawMalloc((size_t)t.length + 1);
    /* the lines with citations removed, one after another (no longer than the text) */
    Py_UCS1 *clean = cite ? PyMem_RawMalloc((size_t)t.length + 1) : NULL;
    Py_ssize_t clean_used = 0;
    /* the kept lines, as the Python loop's `kept` list: ranges of the text (src 0) or of `clean` (src 1), and ""
       (src -1) for a paragraph break; at most two per line, grown as lines are kept */
    Py_ssize_t room = 64;
    Py_ssize_t *ka = PyMem_RawMalloc((size_t)room * sizeof(Py_ssize_t)), *kb = PyMem_RawMalloc((size_t)room *
                                                                                                   sizeof(Py_ssize_t));
    signed char *ksrc = PyMem_RawMalloc((size_t)room);
    Py_ssize_t n_kept = 0;
    const char *decision = NULL;
    int blank_before = 0, citations = 0;
    Py_ssize_t sentences = 0;
    if (!removed || !low || (cite && !clean) || !ka || !kb || !ksrc) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i <= t.length && !decision;) {
        Py_ssize_t j = i;
        if (latin1) {
            const char *nl = memchr((const char *)t.data + i, '\n', (size_t)(t.length - i));
            j = nl ? nl - (const char *)t.data : t.length;
        } else {
            while (j < t.length && at(&t, j) != '\n')
                j++;
        }
        Py_ssize_t a = i, b = j;
        i = j + 1;
        while (a < b && Py_UNICODE_ISSPACE(at(&t, a)))
            a++;
        while (b > a && Py_UNICODE_ISSPACE(at(&t, b - 1)))
            b--;
        if (a == b) {
            blank_before = n_kept > 0;
            continue;
        }
        /* the words of line.split() (how many, and the longest): counted only for a rule that needs them */
        Py_ssize_t words = -1, longest = 0;
#define COUNT_WORDS()                                                                                         \
        do {                                                                                                  \
            words = 0;                                                                                        \
            for (Py_ssize_t k = a; k < b;) {                                                                  \
                while (k < b && Py_UNICODE_ISSPACE(at(&t, k)))                                                \
                    k++;                                                                                      \
                if (k >= b)                                                                                   \
                    break;                                                                                    \
                Py_ssize_t e = k;                                                                             \
                while (e < b && !Py_UNICODE_ISSPACE(at(&t, e)))                                               \
                    e++;                                                                                      \
                words++;                                                                                      \
                longest = e - k > longest ? e - k : longest;                                                  \
                k = e;                                                                                        \
            }                                                                                                 \
        } while (0)
        const char *reason = NULL;
        Text line = t; /* the line the rules after the citations look at: [la, lb) of `line` */
        Py_ssize_t la = a, lb = b;
        if (max_word >= 0 && b - a > max_word) /* a line no longer than max_word has no longer word */
            COUNT_WORDS();
        if (words >= 0 && longest > max_word)
            reason = "long_word";
        else if (cite && memchr((const Py_UCS1 *)t.data + a, '[', (size_t)(b - a))) {
            const Py_UCS1 *c = t.data;
            Py_UCS1 *out = clean + clean_used;
            Py_ssize_t n = 0;
            for (Py_ssize_t k = a; k < b;) {
                const Py_ssize_t e = c[k] == '[' ? citation_end(c, k, b) : 0;
                if (e) {
                    k = e;
                } else {
                    out[n++] = c[k++];
                }
            }
            line = (Text){PyUnicode_1BYTE_KIND, out, n};
            la = 0;
            lb = n;
            while (la < lb && Py_UNICODE_ISSPACE(out[la]))
                la++;
            while (lb > la && Py_UNICODE_ISSPACE(out[lb - 1]))
                lb--;
            if (la == lb)
                reason = "citation_only";
        }
        const Py_ssize_t n = lb - la;
        const Py_UCS4 last = n ? at(&line, lb - 1) : 0;
        if (reason) {
            /* long_word or citation_only: counted below */
        } else if (terminal && (!(last == '.' || last == '?' || last == '!' || last == '"' || last == '\'' ||
                                  last == 0x201D || last == 0x2019) ||
                                (n >= 3 && last == '.' && at(&line, lb - 2) == '.' && at(&line, lb - 3) == '.'))) {
            reason = "no_terminal_punct";
        } else if (min_words >= 0 && words < 0) {
            COUNT_WORDS();
        }
#undef COUNT_WORDS
        if (reason) {
            /* counted below */
        } else if (min_words >= 0 && words < min_words) {
            reason = "too_few_words";
        } else {
            int has_curly = 0; /* the rules that read the lower-cased line */
            for (Py_ssize_t k = la; k < lb; k++) {
                const Py_UCS4 c = at(&line, k);
                has_curly |= c == '{';
                low[k - la] = (char)(c < 128 ? (c >= 'A' && c <= 'Z' ? c + 32 : c) : 0x80);
            }
            const uint64_t found = (lorem || js || policy) ? held(low, n, pats, lens, head, empty) : 0;
            if (lorem && (found & 1))
                decision = "c4_lorem_ipsum";
            else if (js && (found & 2))
                reason = "javascript";
            else if (curly && has_curly)
                decision = "c4_curly_bracket";
            else if (policy && (found & policy_bits))
                reason = "policy";
        }
        if (decision)
            break;
        if (reason) {
            if (count_removed(removed, reason) < 0)
                goto done;
            continue;
        }
        if (min_sentences < 0 || sentences < min_sentences) { /* _SENTENCE_END matches, at least 1 */
            Py_ssize_t found = 0;
            for (Py_ssize_t k = la; k < lb;) {
                const Py_UCS4 c = at(&line, k);
                if (c != '.' && c != '!' && c != '?') {
                    k++;
                    continue;
                }
                Py_ssize_t e = k;
                while (e < lb && (at(&line, e) == '.' || at(&line, e) == '!' || at(&line, e) == '?'))
                    e++;
                while (e < lb && is_closer(at(&line, e)))
                    e++;
                if (e == lb || Py_UNICODE_ISSPACE(at(&line, e)))
                    found++;
                k = e > k ? e : k + 1;
            }
            sentences += found > 1 ? found : 1;
        }
        if (n_kept + 2 > room) {
            room *= 2;
            Py_ssize_t *na = PyMem_RawRealloc(ka, (size_t)room * sizeof(Py_ssize_t));
            ka = na ? na : ka;
            Py_ssize_t *nb = na ? PyMem_RawRealloc(kb, (size_t)room * sizeof(Py_ssize_t)) : NULL;
            kb = nb ? nb : kb;
            signed char *ns = nb ? PyMem_RawRealloc(ksrc, (size_t)room) : NULL;
            ksrc = ns ? ns : ksrc;
            if (!ns) {
                PyErr_NoMemory();
                goto done;
            }
        }
        if (blank_before) {
            ksrc[n_kept] = -1;
            ka[n_kept] = kb[n_kept] = 0;
            n_kept++;
            blank_before = 0;
        }
        /* result != line only where a citation was removed (it is shorter): else the text's own range */
        if (line.data != t.data && lb - la != b - a) {
            citations = 1;
            const Py_ssize_t base = (const Py_UCS1 *)line.data - clean;
            ksrc[n_kept] = 1;
            ka[n_kept] = base + la;
            kb[n_kept] = base + lb;
            clean_used = base + lb;
        } else {
            ksrc[n_kept] = 0;
            ka[n_kept] = a;
            kb[n_kept] = b;
        }
        n_kept++;
    }
    if (!decision && min_sentences >= 0 && sentences < min_sentences)
        decision = "c4_too_few_sentences";
    if (!decision && n_kept == 0)
        decision = "c4_no_lines_left";
    if (decision) {
        result = Py_BuildValue("(sOOO)", decision, Py_None, removed, Py_False);
        goto done;
    }
    /* "\n".join(kept) == text: every line kept whole, in place, one newline apart */
    Py_ssize_t pos = 0, size = n_kept - 1;
    int same = 1;
    for (Py_ssize_t k = 0; k < n_kept; k++) {
        if (k) {
            same &= pos < t.length && at(&t, pos) == '\n';
            pos++;
        }
        if (ksrc[k] == 0) {
            same &= ka[k] == pos;
            pos = kb[k];
        } else if (ksrc[k] == 1) {
            same = 0;
        }
        size += kb[k] - ka[k];
    }
    if (same && pos == t.length) {
        result = Py_BuildValue("(OOOO)", Py_None, Py_None, removed, citations ? Py_True : Py_False);
        goto done;
    }
    /* else the join, written at once: its widest character first (a str's kind is that of its widest) */
    const Text cleaned = {PyUnicode_1BYTE_KIND, clean, clean_used};
    Py_UCS4 maxchar = 127;
    for (Py_ssize_t k = 0; k < n_kept && !PyUnicode_IS_ASCII(text); k++)
        if (ksrc[k] >= 0)
            maxchar = widest_of(ksrc[k] == 1 ? &cleaned : &t, ka[k], kb[k], maxchar);
    joined = PyUnicode_New(size, maxchar);
    if (!joined)
        goto done;
    pos = 0;
    for (Py_ssize_t k = 0; k < n_kept; k++) {
        if (k)
            PyUnicode_WRITE(PyUnicode_KIND(joined), PyUnicode_DATA(joined), pos++, '\n');
        pos = write_range(joined, pos, ksrc[k] == 1 ? &cleaned : &t, ka[k], kb[k]);
    }
    result = Py_BuildValue("(OOOO)", Py_None, joined, removed, citations ? Py_True : Py_False);
done:
    PyMem_RawFree(low);
    PyMem_RawFree(clean);
    PyMem_RawFree(ka);
    PyMem_RawFree(kb);
    PyMem_RawFree(ksrc);
    Py_XDECREF(removed);
    Py_XDECREF(joined);
    return result;
}

/* ---------------------------------------------------------------------------------------- pii_candidates */
static inline int
ascii_alnum(Py_UCS4 c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static inline int
hex_digit(Py_UCS4 c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f');
}

static inline int
decimal(Py_UCS4 c)
{
    return c < 128 ? (c >= '0' && c <= '9') : Py_UNICODE_ISDECIMAL(c);
}

/* re's \w in a str pattern */
static inline int
word_char(Py_UCS4 c)
{
    return c < 128 ? ascii_alnum(c) || c == '_' : Py_UNICODE_ISALNUM(c);
}

/* the end of the run of decimal digits (re's \d) from i, at most `most` long */
static inline Py_ssize_t
decimals(const Text *t, Py_ssize_t i, Py_ssize_t most)
{
    Py_ssize_t j = i;
    while (j < t->length && j - i < most + 1 && decimal(at(t, j)))
        j++;
    return j;
}

PyDoc_STRVAR(pii_candidates_doc,
"pii_candidates(text) -> int\n\n"
"Whether each of the _*_CANDIDATE patterns of pii.py occurs in text, with re's digit and word classes (Unicode).\n"
"Bit 0: email, bit 1: IPv4, bit 2: IPv6, bit 3: phone.");

static PyObject *
pii_candidates(PyObject *self, PyObject *args)
{
    PyObject *text;
    if (!PyArg_ParseTuple(args, "U", &text))
        return NULL;
    if (ready(text) < 0)
        return NULL;
    Text t = text_of(text);
    unsigned found = 0;
    for (Py_ssize_t i = 0; i < t.length && found != 15; i++) {
        const Py_UCS4 c = at(&t, i);
        if (c == '@') {
            if (!(found & 1) && i > 0 && i + 1 < t.length) {
                const Py_UCS4 p = at(&t, i - 1), q = at(&t, i + 1);
                if ((ascii_alnum(p) || p == '.' || p == '_' || p == '%' || p == '+' || p == '-') && ascii_alnum(q))
                    found |= 1;
            }
        } else if (c == ':') {
            /* (?<![\w:.])[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}: with this ':' the first: the maximal hex runs
               after it (then ':') and before it at most 4 long, and the one before not after \w, ':' or '.' (a
               start inside a hex run follows \w) */
            if (!(found & 4)) {
                Py_ssize_t j = i + 1, r = i;
                while (j < t.length && j - i <= 5 && hex_digit(at(&t, j)))
                    j++;
                while (r > 0 && i - r <= 4 && hex_digit(at(&t, r - 1)))
                    r--;
                if (j - i - 1 <= 4 && j < t.length && at(&t, j) == ':' && i - r <= 4) {
                    const Py_UCS4 before = r > 0 ? at(&t, r - 1) : ' ';
                    if (!word_char(before) && before != ':' && before != '.')
                        found |= 4;
                }
            }
        } else if (c == '+') { /* (?<![\w+-])\+\d */
            if (!(found & 8) && i + 1 < t.length && decimal(at(&t, i + 1))) {
                const Py_UCS4 before = i > 0 ? at(&t, i - 1) : ' ';
                if (!word_char(before) && before != '+' && before != '-')
                    found |= 8;
            }
        } else if (decimal(c)) {
            if (!(found & 2) && i + 1 < t.length && at(&t, i + 1) == '.') {
                /* d . d{1,3} . d{1,3} . d: each run maximal (a shorter one is followed by a digit, not '.') */
                Py_ssize_t a = i + 2, b = decimals(&t, a, 3);
                if (b - a >= 1 && b - a <= 3 && b < t.length && at(&t, b) == '.') {
                    Py_ssize_t e = decimals(&t, b + 1, 3);
                    if (e - b - 1 >= 1 && e - b - 1 <= 3 && e + 1 < t.length && at(&t, e) == '.' &&
                        decimal(at(&t, e + 1)))
                        found |= 2;
                }
            }
            if (!(found & 8) && i + 7 < t.length && decimal(at(&t, i + 1)) &&
                decimal(at(&t, i + 2))) {
                const Py_UCS4 sep = at(&t, i + 3);
                if ((sep == ' ' || sep == '.' || sep == '-') && decimal(at(&t, i + 4)) &&
                    decimal(at(&t, i + 5)) && decimal(at(&t, i + 6)) &&
                    decimal(at(&t, i + 7))) { /* then (?![\w-]|[.]\d) */
                    const Py_UCS4 next = i + 8 < t.length ? at(&t, i + 8) : ' ';
                    if (!word_char(next) && next != '-' &&
                        !(next == '.' && i + 9 < t.length && decimal(at(&t, i + 9))))
                        found |= 8;
                }
            }
        }
    }
    return PyLong_FromUnsignedLong(found);
}

/* ------------------------------------------------------------------------------------------------ books */
PyDoc_STRVAR(find_folded_doc,
"find_folded(text, needle, start) -> int\n\n"
"The first index >= start at which text holds `needle` (lower-case ASCII bytes) with its letters in either case,\n"
"ASCII case only (as bytes.lower() and find on the text's Latin-1 or UTF-8 bytes, counted in characters), or -1.");

static PyObject *
find_folded(PyObject *self, PyObject *args)
{
    PyObject *text;
    const char *needle;
    Py_ssize_t size, start;
    if (!PyArg_ParseTuple(args, "Uy#n", &text, &needle, &size, &start))
        return NULL;
    for (Py_ssize_t j = 0; j < size; j++)
        if ((unsigned char)needle[j] >= 128 || (needle[j] >= 'A' && needle[j] <= 'Z')) {
            PyErr_SetString(PyExc_ValueError, "find_folded: the needle must be lower-case ASCII");
            return NULL;
        }
    if (ready(text) < 0)
        return NULL;
    Text t = text_of(text);
    if (start < 0)
        start = 0;
    if (size == 0)
        return PyLong_FromSsize_t(start <= t.length ? start : -1);
#define FOLDED(c) ((c) >= 'A' && (c) <= 'Z' ? (c) + 32 : (c))
#define FIND_FOLDED(T)                                                                                          \
    do {                                                                                                        \
        const T *c = (const T *)t.data;                                                                        \
        const Py_UCS4 first = (unsigned char)needle[0];                                                         \
        for (Py_ssize_t i = start; i + size <= t.length; i++) {                                                 \
            if (FOLDED((Py_UCS4)c[i]) != first)                                                                 \
                continue;                                                                                       \
            Py_ssize_t j = 1;                                                                                   \
            while (j < size && FOLDED((Py_UCS4)c[i + j]) == (unsigned char)needle[j])                           \
                j++;                                                                                            \
            if (j == size)                                                                                      \
                return PyLong_FromSsize_t(i);                                                                   \
        }                                                                                                       \
    } while (0)
    if (t.kind == PyUnicode_1BYTE_KIND) {
        /* 8 bytes at a time: the blocks without the first character in either case are skipped whole */
        const unsigned char *c = t.data, n0 = (unsigned char)needle[0];
        const int letter = n0 >= 'a' && n0 <= 'z';
        const uint64_t ones = 0x0101010101010101ULL, fold = letter ? ones * 0x20 : 0, want = ones * n0;
        Py_ssize_t i = start;
        while (i + 8 <= t.length - size + 1) {
            uint64_t x;
            memcpy(&x, c + i, 8);
            x = (x | fold) ^ want; /* a zero byte where the first character may be */
            const uint64_t zero = (x - ones) & ~x & (ones * 0x80); /* the lowest set bit is the first zero byte */
            if (!zero) {
                i += 8;
                continue;
            }
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            i += __builtin_ctzll(zero) / 8; /* byte k of the block is bits 8k..8k+7: the first candidate */
#endif
            /* (big-endian: the block's first byte, and on from there) */
            Py_ssize_t j = 0;
            while (j < size && FOLDED((Py_UCS4)c[i + j]) == (unsigned char)needle[j])
                j++;
            if (j == size)
                return PyLong_FromSsize_t(i);
            i++;
        }
        start = i;
        FIND_FOLDED(Py_UCS1);
    } else if (t.kind == PyUnicode_2BYTE_KIND)
        FIND_FOLDED(Py_UCS2);
    else
        FIND_FOLDED(Py_UCS4);
#undef FIND_FOLDED
#undef FOLDED
    return PyLong_FromLong(-1);
}

PyDoc_STRVAR(book_lines_doc,
"book_lines(text, start, end) -> (bytes, bytes)\n\n"
"The lines of text[start:end] (split at '\\n'): where each starts in text and how long it is once right-stripped\n"
"(str.rstrip()), as two bytes objects of native int64 (numpy.frombuffer reads them).");

static PyObject *
book_lines(PyObject *self, PyObject *args)
{
    PyObject *text;
    Py_ssize_t start, end;
    if (!PyArg_ParseTuple(args, "Unn", &text, &start, &end))
        return NULL;
    if (ready(text) < 0)
        return NULL;
    Text t = text_of(text);
    if (start < 0 || end > t.length || start > end) {
        PyErr_Format(PyExc_ValueError, "book_lines: [%zd, %zd) is not a range of a text of %zd characters", start,
                     end, t.length);
        return NULL;
    }
    Py_ssize_t room = 1024, n = 0, a = start;
    int64_t *offsets = PyMem_Malloc(room * sizeof(int64_t)), *lengths = PyMem_Malloc(room * sizeof(int64_t));
    PyObject *result = NULL;
    if (!offsets || !lengths) {
        PyErr_NoMemory();
        goto done;
    }
    for (;;) {
        Py_ssize_t b = a;
        if (t.kind == PyUnicode_1BYTE_KIND) {
            const char *nl = memchr((const char *)t.data + a, '\n', end - a);
            b = nl ? nl - (const char *)t.data : end;
        } else {
            while (b < end && at(&t, b) != '\n')
                b++;
        }
        if (n == room) {
            room *= 2;
            int64_t *o = PyMem_Realloc(offsets, room * sizeof(int64_t));
            if (o)
                offsets = o;
            int64_t *l = o ? PyMem_Realloc(lengths, room * sizeof(int64_t)) : NULL;
            if (!l) {
                PyErr_NoMemory();
                goto done;
            }
            lengths = l;
        }
        Py_ssize_t e = b;
        while (e > a && Py_UNICODE_ISSPACE(at(&t, e - 1)))
            e--;
        offsets[n] = a;
        lengths[n] = e - a;
        n++;
        if (b == end)
            break;
        a = b + 1;
    }
    result = Py_BuildValue("(y#y#)", (const char *)offsets, n * (Py_ssize_t)sizeof(int64_t), (const char *)lengths,
                           n * (Py_ssize_t)sizeof(int64_t));
done:
    PyMem_Free(offsets);
    PyMem_Free(lengths);
    return result;
}

PyDoc_STRVAR(book_join_doc,
"book_join(text, offsets, lengths, first, count, wrapped) -> str\n\n"
"Paragraph p of the lines book_lines gave (offsets, lengths: int64) is lines first[p] to first[p] + count[p] - 1\n"
"(int64); a blank line goes between paragraphs. Paragraph p with wrapped[p] (uint8) is its lines stripped and\n"
"joined by spaces, or by nothing after a line ending in a letter and '-' (gutenberg._join_wrapped); any other\n"
"paragraph keeps its right-stripped lines.");

/* the [a, e) ranges of text book_join writes, in order, and the separator before each: 0 none, 1 ' ', 2 '\n',
   3 "\n\n"; visit(...) returns < 0 to stop */
typedef int (*BookVisit)(void *state, Py_ssize_t a, Py_ssize_t e, int sep);

static int
book_walk(const Text *t, const int64_t *offsets, const int64_t *lengths, const int64_t *first, const int64_t *count,
          const uint8_t *wrapped, Py_ssize_t paragraphs, Py_ssize_t lines, BookVisit visit, void *state)
{
    for (Py_ssize_t p = 0; p < paragraphs; p++) {
        if (first[p] < 0 || count[p] < 1 || first[p] > lines - count[p]) {
            PyErr_Format(PyExc_ValueError, "book_join: paragraph %zd (lines %lld to %lld) is not within the %zd lines",
                         p, (long long)first[p], (long long)(first[p] + count[p] - 1), lines);
            return -1;
        }
        Py_ssize_t prev_a = 0, prev_e = 0;
        for (Py_ssize_t r = first[p]; r < first[p] + count[p]; r++) {
            if (offsets[r] < 0 || lengths[r] < 0 || offsets[r] > t->length || lengths[r] > t->length - offsets[r]) {
                PyErr_Format(PyExc_ValueError, "book_join: line %zd is not within the text", r);
                return -1;
            }
            Py_ssize_t a = offsets[r], e = a + lengths[r];
            int sep = r > first[p] ? 2 : (p ? 3 : 0);
            if (wrapped[p]) {
                while (a < e && Py_UNICODE_ISSPACE(at(t, a)))
                    a++;
                /* the paragraph so far ends with the previous line; only one of 2+ characters ending in
                   "<letter>-" glues (after a 1-character line the one before it is ' ' or '-') */
                if (r > first[p])
                    sep = prev_e - prev_a >= 2 && at(t, prev_e - 1) == '-' && Py_UNICODE_ISALPHA(at(t, prev_e - 2))
                              ? 0 : 1;
            }
            if (visit(state, a, e, sep) < 0)
                return -1;
            prev_a = a;
            prev_e = e;
        }
    }
    return 0;
}

typedef struct {
    const Text *t;
    Py_ssize_t size;
    Py_UCS4 maxchar;
    int ascii; /* the text is: nothing to look at */
} BookSize;

static int
book_size(void *state, Py_ssize_t a, Py_ssize_t e, int sep)
{
    BookSize *s = state;
    s->size += (sep == 3 ? 2 : sep ? 1 : 0) + e - a;
    if (!s->ascii)
        s->maxchar = widest_of(s->t, a, e, s->maxchar);
    return 0;
}

typedef struct {
    const Text *t;
    PyObject *out;
    Py_ssize_t n;
} BookWrite;

static int
book_write(void *state, Py_ssize_t a, Py_ssize_t e, int sep)
{
    BookWrite *w = state;
    const int kind = PyUnicode_KIND(w->out);
    void *data = PyUnicode_DATA(w->out);
    if (sep == 3) {
        PyUnicode_WRITE(kind, data, w->n, '\n');
        PyUnicode_WRITE(kind, data, w->n + 1, '\n');
        w->n += 2;
    } else if (sep) {
        PyUnicode_WRITE(kind, data, w->n, sep == 1 ? ' ' : '\n');
        w->n++;
    }
    w->n = write_range(w->out, w->n, w->t, a, e);
    return 0;
}

static PyObject *
book_join(PyObject *self, PyObject *args)
{
    PyObject *text, *o[5], *out = NULL;
    if (!PyArg_ParseTuple(args, "UOOOOO", &text, &o[0], &o[1], &o[2], &o[3], &o[4]))
        return NULL;
    if (ready(text) < 0)
        return NULL;
    static const char *names[5] = {"offsets", "lengths", "first", "count", "wrapped"};
    Py_buffer v[5];
    int got = 0;
    for (; got < 5; got++)
        if (get_buffer(o[got], &v[got], 0, got == 4 ? 1 : 8, names[got]) < 0)
            goto done;
    const Py_ssize_t lines = v[0].len / 8, paragraphs = v[2].len / 8;
    if (v[1].len / 8 != lines || v[3].len / 8 != paragraphs || v[4].len != paragraphs) {
        PyErr_SetString(PyExc_ValueError, "book_join: offsets and lengths (one per line), first, count and wrapped "
                                          "(one per paragraph) differ in length");
        goto done;
    }
    Text t = text_of(text);
    BookSize size = {&t, 0, 127, PyUnicode_IS_ASCII(text)};
    if (book_walk(&t, v[0].buf, v[1].buf, v[2].buf, v[3].buf, v[4].buf, paragraphs, lines, book_size, &size) < 0)
        goto done;
    out = PyUnicode_New(size.size, size.maxchar);
    if (!out)
        goto done;
    BookWrite write = {&t, out, 0};
    if (book_walk(&t, v[0].buf, v[1].buf, v[2].buf, v[3].buf, v[4].buf, paragraphs, lines, book_write, &write) < 0)
        Py_CLEAR(out);
done:
    while (got-- > 0)
        PyBuffer_Release(&v[got]);
    return out;
}

PyDoc_STRVAR(utf8_len_doc,
"utf8_len(text) -> int\n\n"
"len(text.encode('utf-8', 'surrogatepass')), without making the copy.");

static PyObject *
utf8_len(PyObject *self, PyObject *text)
{
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "utf8_len: expected a str, got %.100s", Py_TYPE(text)->tp_name);
        return NULL;
    }
    if (ready(text) < 0)
        return NULL;
    Text t = text_of(text);
    Py_ssize_t n = t.length;
    if (PyUnicode_IS_ASCII(text))
        return PyLong_FromSsize_t(n);
    if (t.kind == PyUnicode_1BYTE_KIND) { /* one more byte per character >= 0x80: 8 at a time */
        const unsigned char *c = t.data;
        Py_ssize_t i = 0;
        for (; i + 8 <= t.length; i += 8) {
            uint64_t x;
            memcpy(&x, c + i, 8);
            n += __builtin_popcountll(x & 0x8080808080808080ULL);
        }
        for (; i < t.length; i++)
            n += c[i] >> 7;
    } else {
        for (Py_ssize_t i = 0; i < t.length; i++) {
            const Py_UCS4 c = at(&t, i);
            n += (c >= 0x80) + (c >= 0x800) + (c >= 0x10000);
        }
    }
    return PyLong_FromSsize_t(n);
}

/* ------------------------------------------------------------------------------------------ langid_scores */
PyDoc_STRVAR(langid_scores_doc,
"langid_scores(table, classes, feats, x, bounds, prior, out, kernels) -> bool\n\n"
"The naive-Bayes scores of every text: for text i, out[i] = x[lo:hi] @ table[feats[lo:hi]] + prior with lo, hi =\n"
"bounds[i], bounds[i+1] (table: float32 rows of `classes` values; feats int32; x float32; bounds int64; prior\n"
"float32 of `classes`; out float32, one row per text), each product summed in the order OpenBLAS's\n"
"single-threaded sgemv_n kernels sum it (kernels 0: SkylakeX and its successors; 1: Haswell and Zen), so that the\n"
"float32 bits are numpy's (its `@` calls that kernel) without gathering the rows. The caller checks the bits\n"
"against numpy's at load and uses this only if they agree. False (nothing written) where this build cannot run\n"
"it: no x86-64 FMA. Built with -ffp-contract=off: what the kernels fuse is written as fmaf, the rest is not.");

#if defined(__x86_64__) && defined(__GNUC__)
#define LANGID_FMA 1
/* one text's product, y[0:m] (m < 4096 classes), columns rows[j] scaled by x[j], j < n */
__attribute__((target("avx2,fma"))) static void
sgemv_rows(const float *table, Py_ssize_t m, const int32_t *feats, const float *x, Py_ssize_t n, float *restrict y,
           int haswell)
{
    for (Py_ssize_t i = 0; i < m; i++)
        y[i] = 0.0f;
    if (!haswell && n <= 48 && n != 4) { /* sgemv_kernel_n_128: each row one fused chain over the columns from 0 */
        for (Py_ssize_t j = 0; j < n; j++) {
            const float *restrict r = table + (size_t)feats[j] * (size_t)m;
            const float xj = x[j];
            for (Py_ssize_t i = 0; i < m; i++)
                y[i] = __builtin_fmaf(r[i], xj, y[i]);
        }
        for (Py_ssize_t i = 0; i < m; i++)
            y[i] = y[i] + 0.0f; /* y = acc * alpha + y (y zero) */
        return;
    }
    /* sgemv_n_4.c: rows [0, nb) in blocks of columns (8, then 4, 2, 1: kernels 4x8, 4x4 and n_64), the first
       `head` of them summing even and odd columns apart (the kernels' 4- and 8-row heads); rows [nb, m) one fused
       chain each over all the columns (the scalar tail loop). Haswell's 2- and 1-column kernels (4x2, 4x1) add
       each rounded product to y, SkylakeX's (n_64) a fused chain; Haswell's tail loop is not fused. */
    const Py_ssize_t nb = m & ~(Py_ssize_t)3, head = (nb & 4) + ((nb - (nb & 4)) & 8);
    float tail[3] = {0.0f, 0.0f, 0.0f};
    Py_ssize_t j = 0;
    for (int width = 8; width >= 1; width /= 2) {
        const int blocks = width == 8 ? (int)(n >> 3) : (n & width) ? 1 : 0;
        for (int b = 0; b < blocks; b++, j += width) {
            const float *r[8];
            float xs[8];
            for (int k = 0; k < width; k++) {
                r[k] = table + (size_t)feats[j + k] * (size_t)m;
                xs[k] = x[j + k];
            }
            if (width >= 4) {
                for (Py_ssize_t i = 0; i < head; i++) {
                    float e = __builtin_fmaf(r[0][i], xs[0], 0.0f), o = __builtin_fmaf(r[1][i], xs[1], 0.0f);
                    e = __builtin_fmaf(r[2][i], xs[2], e);
                    o = __builtin_fmaf(r[3][i], xs[3], o);
                    if (width == 8) {
                        e = __builtin_fmaf(r[4][i], xs[4], e);
                        o = __builtin_fmaf(r[5][i], xs[5], o);
                        e = __builtin_fmaf(r[6][i], xs[6], e);
                        o = __builtin_fmaf(r[7][i], xs[7], o);
                    }
                    y[i] = y[i] + (o + e);
                }
            }
            if (width == 8) {
                if (j + 16 <= n) /* the next block's rows: random rows of a table far larger than the caches */
                    for (int k = 0; k < 8; k++)
                        for (Py_ssize_t c = 0; c < m; c += 16)
                            __builtin_prefetch(table + (size_t)feats[j + 8 + k] * (size_t)m + c);
                for (Py_ssize_t i = head; i < nb; i++) {
                    float acc = __builtin_fmaf(r[0][i], xs[0], 0.0f);
                    acc = __builtin_fmaf(r[1][i], xs[1], acc);
                    acc = __builtin_fmaf(r[2][i], xs[2], acc);
                    acc = __builtin_fmaf(r[3][i], xs[3], acc);
                    acc = __builtin_fmaf(r[4][i], xs[4], acc);
                    acc = __builtin_fmaf(r[5][i], xs[5], acc);
                    acc = __builtin_fmaf(r[6][i], xs[6], acc);
                    acc = __builtin_fmaf(r[7][i], xs[7], acc);
                    y[i] = y[i] + acc;
                }
            } else if (haswell && width == 2) {
                for (Py_ssize_t i = 0; i < nb; i++)
                    y[i] = (y[i] + r[0][i] * xs[0]) + r[1][i] * xs[1];
            } else if (haswell && width == 1) {
                for (Py_ssize_t i = 0; i < nb; i++)
                    y[i] = y[i] + r[0][i] * xs[0];
            } else {
                for (Py_ssize_t i = width >= 4 ? head : 0; i < nb; i++) {
                    float acc = __builtin_fmaf(r[0][i], xs[0], 0.0f);
                    for (int k = 1; k < width; k++)
                        acc = __builtin_fmaf(r[k][i], xs[k], acc);
                    y[i] = y[i] + acc;
                }
            }
            for (Py_ssize_t i = nb; i < m; i++)
                for (int k = 0; k < width; k++)
                    tail[i - nb] = haswell ? tail[i - nb] + r[k][i] * xs[k] /* (built without FMA there) */
                                           : __builtin_fmaf(r[k][i], xs[k], tail[i - nb]);
        }
    }
    for (Py_ssize_t i = nb; i < m; i++)
        y[i] = y[i] + tail[i - nb];
}
#endif

static PyObject *
langid_scores(PyObject *self, PyObject *args)
{
    PyObject *o[6];
    Py_ssize_t classes;
    int kernels;
    if (!PyArg_ParseTuple(args, "OnOOOOOi", &o[0], &classes, &o[1], &o[2], &o[3], &o[4], &o[5], &kernels))
        return NULL;
    if (kernels != 0 && kernels != 1) {
        PyErr_Format(PyExc_ValueError, "langid_scores: kernels %d, expected 0 (SkylakeX) or 1 (Haswell)", kernels);
        return NULL;
    }
#ifndef LANGID_FMA
    Py_RETURN_FALSE;
#else
    if (!__builtin_cpu_supports("fma") || !__builtin_cpu_supports("avx2"))
        Py_RETURN_FALSE;
    if (classes < 1 || classes >= 4096) {
        PyErr_Format(PyExc_ValueError, "langid_scores: %zd classes, expected 1 to 4095", classes);
        return NULL;
    }
    static const char *names[6] = {"table", "feats", "x", "bounds", "prior", "out"};
    static const Py_ssize_t sizes[6] = {4, 4, 4, 8, 4, 4};
    Py_buffer v[6];
    int got = 0;
    PyObject *result = NULL;
    for (; got < 6; got++)
        if (get_buffer(o[got], &v[got], got == 5, sizes[got], names[got]) < 0)
            goto done;
    const Py_ssize_t rows = v[0].len / 4 / classes, n_feats = v[1].len / 4, texts = v[3].len / 8 - 1;
    const int64_t *bounds = v[3].buf;
    const int32_t *feats = v[1].buf;
    if (v[2].len / 4 != n_feats || v[4].len / 4 != classes || texts < 0 || v[5].len / 4 != texts * classes) {
        PyErr_SetString(PyExc_ValueError, "langid_scores: x (one per feature), prior (one per class) or out (a row "
                                          "per text) has the wrong length");
        goto done;
    }
    for (Py_ssize_t t = 0; t < texts; t++)
        if (bounds[t] < 0 || bounds[t] > bounds[t + 1] || bounds[t + 1] > n_feats) {
            PyErr_Format(PyExc_ValueError, "langid_scores: bounds[%zd:%zd] is not a range of the features", t, t + 2);
            goto done;
        }
    for (Py_ssize_t k = 0; k < n_feats; k++)
        if (feats[k] < 0 || feats[k] >= rows) {
            PyErr_Format(PyExc_ValueError, "langid_scores: feature %zd is %d, the table has %zd rows", k, feats[k],
                         rows);
            goto done;
        }
    Py_BEGIN_ALLOW_THREADS
    const float *table = v[0].buf, *x = v[2].buf, *prior = v[4].buf;
    float *out = v[5].buf;
    for (Py_ssize_t t = 0; t < texts; t++) {
        float *y = out + t * classes;
        sgemv_rows(table, classes, feats + bounds[t], x + bounds[t], (Py_ssize_t)(bounds[t + 1] - bounds[t]), y,
                   kernels);
        for (Py_ssize_t i = 0; i < classes; i++)
            y[i] = y[i] + prior[i];
    }
    Py_END_ALLOW_THREADS
    result = Py_True;
    Py_INCREF(result);
done:
    while (got-- > 0)
        PyBuffer_Release(&v[got]);
    return result;
#endif
}

static PyMethodDef methods[] = {
    {"langid_scores", langid_scores, METH_VARARGS, langid_scores_doc},
    {"utf8_len", utf8_len, METH_O, utf8_len_doc},
    {"find_folded", find_folded, METH_VARARGS, find_folded_doc},
    {"book_lines", book_lines, METH_VARARGS, book_lines_doc},
    {"book_join", book_join, METH_VARARGS, book_join_doc},
    {"pii_candidates", pii_candidates, METH_VARARGS, pii_candidates_doc},
    {"c4_lines", c4_lines, METH_VARARGS, c4_lines_doc},
    {"fineweb_counts", fineweb_counts, METH_VARARGS, fineweb_counts_doc},
    {"gopher_lines", gopher_lines, METH_VARARGS, gopher_lines_doc},
    {"normalize_unchanged", normalize_unchanged, METH_VARARGS, normalize_unchanged_doc},
    {"markers_in", markers_in, METH_VARARGS, markers_in_doc},
    {"gopher_quality", gopher_quality, METH_VARARGS, gopher_quality_doc},
    {"langid_walk", langid_walk, METH_VARARGS, langid_walk_doc},
    {"gopher_ngrams", gopher_ngrams, METH_VARARGS, gopher_ngrams_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "data_pipelines._native",
    "Compiled inner loops of the data pipeline's filters (see the source's header).", -1, methods,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    PyObject *m = PyModule_Create(&module);
    /* data_pipelines/native.py uses a build whose VERSION is its own: raise it with any change of a function's
       arguments or results */
    if (m && PyModule_AddIntConstant(m, "VERSION", NATIVE_VERSION) < 0)
        Py_CLEAR(m);
    return m;
}
