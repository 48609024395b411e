#ifndef CPNG_H
#define CPNG_H
#include <stddef.h>

// A decoded PNG: grey (1 channel) or RGB (3 channels); palette images become RGB, alpha is
// dropped, bit depths below 8 are widened to 8. 16-bit samples are native-endian uint16.
typedef struct {
    int width;
    int height;
    int channels;
    int bit_depth;          // 8 or 16
    unsigned char *pixels;  // malloc'd, row-major, channels interleaved
} cpng_image;

// Each returns 0 on success, or -1 with a one-line reason in `message`.
int cpng_read(const char *path, cpng_image *image, char *message, size_t message_len);
void cpng_free(cpng_image *image);
int cpng_write(const char *path, int width, int height, int channels,
               const unsigned char *pixels, char *message, size_t message_len);

#endif
