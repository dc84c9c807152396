/* One-pass parser of Criteo-format lines: the fast path of criteo.parse_block (see native.py).
 *
 * It accepts exactly the lines parse_block accepts and gives the same values; it does not say what is
 * wrong with a line. On the first line it does not accept it returns -1 - (index of that line), and the
 * caller re-parses the block with parse_block, which names the file, line, column and problem.
 *
 * A line: label '0' or '1', 13 dense fields (empty, or an optional '-' then 1 to 18 digits), 26
 * categorical fields (empty, or 1 to 8 hexadecimal characters, either case), 40 fields separated by
 * tabs, ending in '\n' or '\r\n'. Any other byte (a stray '\r' included) makes the line bad.
 */
#include <stdint.h>

#define NUM_DENSE 13
#define NUM_CAT 26

/* value of a hex digit, or -1: a table (filled on first use), as the three range tests per byte cost
 * measurably more in this loop */
static int8_t HEX[256];
static int hex_ready = 0;

static void hex_init(void) {
    for (int c = 0; c < 256; c++) {
        HEX[c] = (int8_t)(c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                          : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1);
    }
    hex_ready = 1;
}

#define hexval(c) HEX[(uint8_t)(c)]

/* data[0:len] holds n whole lines (each ends in '\n'). Outputs are row-major, n rows each.
 * Returns n when every line is valid, else -1 - (index of the first bad line). */
int64_t criteo_parse(const uint8_t *data, int64_t len, int64_t n, uint8_t *labels, int64_t *dense,
                     uint8_t *dense_missing, uint32_t *cats, uint8_t *cat_missing) {
    const uint8_t *p = data, *end = data + len;
    if (!hex_ready) hex_init();
    for (int64_t i = 0; i < n; i++) {
        if (p >= end) return -1 - i;
        /* label */
        if ((p[0] != '0' && p[0] != '1') || p + 1 >= end || p[1] != '\t') return -1 - i;
        labels[i] = (uint8_t)(p[0] - '0');
        p += 2;
        /* dense: each followed by a tab */
        int64_t *d = dense + i * NUM_DENSE;
        uint8_t *dm = dense_missing + i * NUM_DENSE;
        for (int j = 0; j < NUM_DENSE; j++) {
            int neg = 0, digits = 0;
            int64_t v = 0;
            if (*p == '-') { neg = 1; p++; }
            while (*p >= '0' && *p <= '9') {
                v = v * 10 + (*p - '0');
                p++;
                if (++digits > 18) return -1 - i;
            }
            if (*p != '\t' || (neg && digits == 0)) return -1 - i;
            p++;
            dm[j] = digits == 0;
            d[j] = neg ? -v : v;
        }
        /* categorical: tab-separated, the last one ends the line */
        uint32_t *c = cats + i * NUM_CAT;
        uint8_t *cm = cat_missing + i * NUM_CAT;
        for (int j = 0; j < NUM_CAT; j++) {
            uint32_t v = 0;
            int k = 0, h;
            while ((h = hexval(*p)) >= 0) {
                if (++k > 8) return -1 - i;
                v = (v << 4) | (uint32_t)h;
                p++;
            }
            cm[j] = k == 0;
            c[j] = v;
            if (j < NUM_CAT - 1) {
                if (*p != '\t') return -1 - i;
                p++;
            }
        }
        if (*p == '\r') p++;
        if (*p != '\n') return -1 - i;
        p++;
    }
    return p == end ? n : -1 - n;
}

/* Value -> id lookup by an open-addressing hash table (linear probing), the fast path of
 * vocab.Vocabulary.lookup: np.searchsorted over the sorted values took 1.3-1.8 s of a 7 s prepare of
 * 300,000 lines (load ~13 on 2 cores), a random binary search per id.
 * The table has size mask + 1 (a power of two, at least twice the number of values); slot_ids[s] == 0 marks
 * an empty slot, else slot_keys[s] holds the value whose value-order id is slot_ids[s] (>= 2). */
static inline uint64_t slot_of(uint32_t key, uint64_t mask) {
    return ((uint64_t)key * 0x9E3779B97F4A7C15ull >> 32) & mask;
}

void vocab_build(const uint32_t *values, int64_t nv, uint64_t mask, uint32_t *slot_keys, int32_t *slot_ids) {
    for (int64_t k = 0; k < nv; k++) {
        uint64_t s = slot_of(values[k], mask);
        while (slot_ids[s] != 0) s = (s + 1) & mask;
        slot_keys[s] = values[k];
        slot_ids[s] = (int32_t)(k + 2);
    }
}

/* Row by row (one pass over the rows, not one per feature): out[i * nf + f] = value-order id of
 * raw[i * nf + f] in feature f's table (masks[f], slot_keys[f], slot_ids[f]): 0 (missing, when
 * missing[i * nf + f]), the kept value's id, or 1 (rare/unseen). */
void vocab_lookup(int64_t nf, const uint64_t *masks, uint32_t *const *slot_keys, int32_t *const *slot_ids,
                  const uint32_t *raw, const uint8_t *missing, int64_t n, int32_t *out) {
    for (int64_t i = 0; i < n * nf; i += nf) {
        for (int64_t f = 0; f < nf; f++) {
            int32_t id = 1;
            if (missing[i + f]) {
                id = 0;
            } else {
                uint32_t key = raw[i + f];
                const uint32_t *keys = slot_keys[f];
                const int32_t *ids = slot_ids[f];
                for (uint64_t s = slot_of(key, masks[f]); ids[s] != 0; s = (s + 1) & masks[f]) {
                    if (keys[s] == key) { id = ids[s]; break; }
                }
            }
            out[i + f] = id;
        }
    }
}
