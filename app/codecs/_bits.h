/* Shared by the codecs' compiled modules (_bitpack.c, _rice.c): an unaligned little-endian 64-bit read. */
#ifndef DISTILLERY_CODECS_BITS_H
#define DISTILLERY_CODECS_BITS_H

#include <stdint.h>
#include <string.h>

static inline uint64_t read64(const unsigned char *p) {
    uint64_t word;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(&word, p, 8);
#else
    word = 0;
    for (int j = 0; j < 8; j++) word |= (uint64_t)p[j] << (8 * j);
#endif
    return word;
}

#endif
