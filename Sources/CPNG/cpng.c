// Every libpng call lives here: libpng reports errors by longjmp, which must not unwind
// through Swift frames, so the jump lands in these functions and becomes an error code.
#include "cpng.h"
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

typedef struct {
    jmp_buf jump;
    char *message;
    size_t message_len;
} cpng_error_state;

static void cpng_on_error(png_structp png, png_const_charp text) {
    cpng_error_state *state = (cpng_error_state *)png_get_error_ptr(png);
    snprintf(state->message, state->message_len, "%s", text);
    longjmp(state->jump, 1);
}

static void cpng_on_warning(png_structp png, png_const_charp text) {
    (void)png; (void)text;  // warnings (e.g. unknown chunks) are not errors for us
}

int cpng_read(const char *path, cpng_image *image, char *message, size_t message_len) {
    memset(image, 0, sizeof(*image));
    FILE *file = fopen(path, "rb");
    if (!file) {
        snprintf(message, message_len, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    unsigned char signature[8];
    if (fread(signature, 1, 8, file) != 8 || png_sig_cmp(signature, 0, 8) != 0) {
        snprintf(message, message_len, "%s is not a PNG file", path);
        fclose(file);
        return -1;
    }
    cpng_error_state state;
    state.message = message;
    state.message_len = message_len;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &state, cpng_on_error, cpng_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        snprintf(message, message_len, "out of memory reading %s", path);
        png_destroy_read_struct(png ? &png : NULL, NULL, NULL);
        fclose(file);
        return -1;
    }
    // Locals that change after setjmp must be volatile to survive the longjmp.
    unsigned char *volatile pixels = NULL;
    png_bytep *volatile rows = NULL;
    if (setjmp(state.jump)) {
        free(pixels);
        free(rows);
        png_destroy_read_struct(&png, &info, NULL);
        fclose(file);
        return -1;
    }
    png_init_io(png, file);
    png_set_sig_bytes(png, 8);
    // Refuse absurd sizes before allocating: 1<<16 per side is plenty for this toolkit.
    png_set_user_limits(png, 1 << 16, 1 << 16);
    png_read_info(png, info);
    int color = png_get_color_type(png, info);
    int depth = png_get_bit_depth(png, info);
    if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
    if (color & PNG_COLOR_MASK_ALPHA || png_get_valid(png, info, PNG_INFO_tRNS)) png_set_strip_alpha(png);
    if (depth == 16) {
        const unsigned int one = 1;
        if (*(const unsigned char *)&one == 1) png_set_swap(png);  // to native little-endian
    }
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    int width = (int)png_get_image_width(png, info);
    int height = (int)png_get_image_height(png, info);
    int channels = png_get_channels(png, info);
    int out_depth = png_get_bit_depth(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    pixels = malloc(rowbytes * (size_t)height);
    rows = malloc(sizeof(png_bytep) * (size_t)height);
    if (!pixels || !rows) {
        snprintf(message, message_len, "out of memory reading %s", path);
        longjmp(state.jump, 1);
    }
    for (int y = 0; y < height; y++) rows[y] = pixels + rowbytes * (size_t)y;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    free(rows);
    png_destroy_read_struct(&png, &info, NULL);
    fclose(file);
    image->width = width;
    image->height = height;
    image->channels = channels;
    image->bit_depth = out_depth;
    image->pixels = pixels;
    return 0;
}

void cpng_free(cpng_image *image) {
    free(image->pixels);
    image->pixels = NULL;
}

int cpng_write(const char *path, int width, int height, int channels,
               const unsigned char *pixels, char *message, size_t message_len) {
    if (channels != 1 && channels != 3) {
        snprintf(message, message_len, "PNG output needs 1 or 3 channels, got %d", channels);
        return -1;
    }
    FILE *file = fopen(path, "wb");
    if (!file) {
        snprintf(message, message_len, "cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    cpng_error_state state;
    state.message = message;
    state.message_len = message_len;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &state, cpng_on_error, cpng_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info) {
        snprintf(message, message_len, "out of memory writing %s", path);
        png_destroy_write_struct(png ? &png : NULL, NULL);
        fclose(file);
        return -1;
    }
    if (setjmp(state.jump)) {
        png_destroy_write_struct(&png, &info);
        fclose(file);
        return -1;
    }
    png_init_io(png, file);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8,
                 channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    size_t rowbytes = (size_t)width * (size_t)channels;
    for (int y = 0; y < height; y++) png_write_row(png, (png_const_bytep)(pixels + rowbytes * (size_t)y));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    if (fclose(file) != 0) {
        snprintf(message, message_len, "cannot finish %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}
