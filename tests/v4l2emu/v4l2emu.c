/*
 * v4l2emu: an emulated V4L2 capture device in userspace, loaded with LD_PRELOAD.
 *
 * It intercepts open/open64/openat/openat64, close, ioctl (and syscall(SYS_ioctl, ...),
 * which is how the Rust `v4l` crate issues ioctls), mmap/mmap64, munmap and poll for one
 * path (env V4L2EMU_PATH, e.g. /dev/video42) and passes every other call to the real libc.
 * Frames are generated at the negotiated rate (YUYV, RGB3, GREY from a deterministic
 * pattern, MJPG from pre-encoded files), and faults are scripted through V4L2EMU_FAULTS.
 * See README.md beside this file for the pattern formula and the fault syntax.
 *
 * The file descriptor handed out for the device is a memfd: the buffers live in it, so the
 * caller's mmap of a buffer offset is a real mapping of the memory the emulator writes.
 */
#undef _FORTIFY_SOURCE
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/videodev2.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_BUFFERS 8
#define MAX_OPENS 16
#define MAX_MAPPINGS 32
#define MAX_FAULTS 64
#define MAX_MJPEG_FRAMES 256
#define NS_PER_MS 1000000LL
#define NS_PER_S 1000000000LL

/* ---------------------------------------------------------------- real libc entry points */

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*close_fn)(int);
typedef int (*ioctl_fn)(int, unsigned long, ...);
typedef long (*syscall_fn)(long, ...);
typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);
typedef int (*munmap_fn)(void *, size_t);
typedef int (*poll_fn)(struct pollfd *, nfds_t, int);

static open_fn real_open_p, real_open64_p;
static openat_fn real_openat_p, real_openat64_p;
static close_fn real_close_p;
static ioctl_fn real_ioctl_p;
static syscall_fn real_syscall_p;
static mmap_fn real_mmap_p, real_mmap64_p;
static munmap_fn real_munmap_p;
static poll_fn real_poll_p;

static void *next_symbol(const char *name)
{
    return dlsym(RTLD_NEXT, name);
}

#define REAL(var, name)                                                              \
    (__atomic_load_n(&var, __ATOMIC_ACQUIRE)                                         \
         ? var                                                                       \
         : (__atomic_store_n(&var, (__typeof__(var))next_symbol(name), __ATOMIC_RELEASE), var))

__attribute__((constructor)) static void resolve_real_symbols(void)
{
    (void)REAL(real_open_p, "open");
    (void)REAL(real_open64_p, "open64");
    (void)REAL(real_openat_p, "openat");
    (void)REAL(real_openat64_p, "openat64");
    (void)REAL(real_close_p, "close");
    (void)REAL(real_ioctl_p, "ioctl");
    (void)REAL(real_syscall_p, "syscall");
    (void)REAL(real_mmap_p, "mmap");
    (void)REAL(real_mmap64_p, "mmap64");
    (void)REAL(real_munmap_p, "munmap");
    (void)REAL(real_poll_p, "poll");
}

/* ---------------------------------------------------------------- device state */

enum fault_kind { FAULT_STALL, FAULT_UNPLUG, FAULT_CORRUPT, FAULT_GAP, FAULT_EIO };

struct fault {
    enum fault_kind kind;
    uint64_t at_frame; /* index among all frames produced since the library was loaded */
    int64_t arg;       /* stall/unplug: milliseconds; gap: sequence numbers skipped */
    int done;
};

struct emu_buffer {
    int queued; /* owned by the driver, waiting to be filled */
    int done;   /* filled, waiting for DQBUF */
    uint32_t bytesused;
    uint32_t sequence;
    uint32_t flags;
    int64_t timestamp_ns;
};

struct emu_open {
    int fd; /* -1 when the slot is free */
    unsigned generation;
    int nonblocking;
};

struct mapping {
    void *addr;
    size_t length;
};

struct format_info {
    uint32_t fourcc;
    const char *description;
    uint32_t flags;
};

static const struct format_info raw_formats[] = {
    {V4L2_PIX_FMT_YUYV, "YUYV 4:2:2", 0},
    {V4L2_PIX_FMT_RGB24, "24-bit RGB 8-8-8", 0},
    {V4L2_PIX_FMT_GREY, "8-bit Greyscale", 0},
};
static const struct format_info mjpeg_format = {V4L2_PIX_FMT_MJPEG, "Motion-JPEG",
                                                V4L2_FMT_FLAG_COMPRESSED};

static const uint32_t raw_sizes[][2] = {{640, 480}, {320, 240}};
static const uint32_t frame_rates[] = {60, 30, 15};

struct control {
    uint32_t id;
    uint32_t type;
    const char *name;
    int32_t minimum, maximum, step, default_value;
    int32_t value;
    uint32_t auto_id; /* set while this auto control is on makes the control inactive */
    int32_t auto_manual_value; /* value of auto_id meaning "manual" */
};

static struct control controls[] = {
    {V4L2_CID_BRIGHTNESS, V4L2_CTRL_TYPE_INTEGER, "Brightness", -64, 64, 1, 0, 0, 0, 0},
    {V4L2_CID_AUTO_WHITE_BALANCE, V4L2_CTRL_TYPE_BOOLEAN, "White Balance, Automatic", 0, 1, 1,
     1, 1, 0, 0},
    {V4L2_CID_AUTOGAIN, V4L2_CTRL_TYPE_BOOLEAN, "Gain, Automatic", 0, 1, 1, 1, 1, 0, 0},
    {V4L2_CID_GAIN, V4L2_CTRL_TYPE_INTEGER, "Gain", 0, 255, 1, 32, 32, V4L2_CID_AUTOGAIN, 0},
    {V4L2_CID_WHITE_BALANCE_TEMPERATURE, V4L2_CTRL_TYPE_INTEGER, "White Balance Temperature",
     2800, 6500, 10, 4600, 4600, V4L2_CID_AUTO_WHITE_BALANCE, 0},
    {V4L2_CID_EXPOSURE_AUTO, V4L2_CTRL_TYPE_MENU, "Auto Exposure", 0, 3, 1,
     V4L2_EXPOSURE_APERTURE_PRIORITY, V4L2_EXPOSURE_APERTURE_PRIORITY, 0, 0},
    {V4L2_CID_EXPOSURE_ABSOLUTE, V4L2_CTRL_TYPE_INTEGER, "Exposure Time, Absolute", 3, 2047, 1,
     250, 250, V4L2_CID_EXPOSURE_AUTO, V4L2_EXPOSURE_MANUAL},
};
#define N_CONTROLS (sizeof(controls) / sizeof(controls[0]))

static struct {
    pthread_mutex_t lock;
    int configured;
    char path[256];

    unsigned generation; /* bumped by an unplug: every fd opened before is dead */
    int64_t absent_until_ns;
    int queue_error; /* set by an injected EIO until the buffers are released */

    uint32_t pixelformat, width, height;
    uint32_t interval_num, interval_den;

    int buffers_owner; /* fd that allocated the buffers, -1 if none */
    unsigned n_buffers;
    size_t buffer_stride; /* bytes between buffers in the memfd (page multiple) */
    uint32_t sizeimage;
    unsigned char *view; /* the emulator's own mapping of the memfd */
    struct emu_buffer buffers[MAX_BUFFERS];
    unsigned queue_order[MAX_BUFFERS]; /* queued buffers, oldest first */
    unsigned queue_len;
    unsigned done_order[MAX_BUFFERS]; /* filled buffers, oldest first */
    unsigned done_len;

    int streaming;
    uint32_t sequence;
    uint64_t frames_produced;
    int64_t next_due_ns;

    struct emu_open opens[MAX_OPENS];
    struct mapping mappings[MAX_MAPPINGS];
    unsigned n_mappings;

    struct fault faults[MAX_FAULTS];
    unsigned n_faults;

    unsigned char *mjpeg[MAX_MJPEG_FRAMES];
    uint32_t mjpeg_len[MAX_MJPEG_FRAMES];
    unsigned n_mjpeg;
    uint32_t mjpeg_width, mjpeg_height, mjpeg_max_len;
} dev = {.lock = PTHREAD_MUTEX_INITIALIZER, .buffers_owner = -1};

static pthread_once_t config_once = PTHREAD_ONCE_INIT;
/* Set while this thread reads the configuration, whose file reads must not recurse into it. */
static __thread int configuring;

static int64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static void sleep_until_ns(int64_t deadline_ns)
{
    struct timespec ts = {.tv_sec = deadline_ns / NS_PER_S, .tv_nsec = deadline_ns % NS_PER_S};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static void log_line(const char *message)
{
    if (getenv("V4L2EMU_VERBOSE") != NULL) {
        fprintf(stderr, "v4l2emu: %s\n", message);
    }
}

static void parse_faults(const char *spec)
{
    char buffer[1024];
    snprintf(buffer, sizeof(buffer), "%s", spec);
    char *saveptr = NULL;
    for (char *item = strtok_r(buffer, ",", &saveptr); item != NULL;
         item = strtok_r(NULL, ",", &saveptr)) {
        char *at = strchr(item, '@');
        if (at == NULL || dev.n_faults == MAX_FAULTS) {
            fprintf(stderr, "v4l2emu: ignoring fault '%s'\n", item);
            continue;
        }
        *at = '\0';
        struct fault *fault = &dev.faults[dev.n_faults];
        memset(fault, 0, sizeof(*fault));
        char *colon = strchr(at + 1, ':');
        if (colon != NULL) {
            *colon = '\0';
            fault->arg = strtoll(colon + 1, NULL, 10);
        }
        fault->at_frame = strtoull(at + 1, NULL, 10);
        if (strcmp(item, "stall") == 0) {
            fault->kind = FAULT_STALL;
        } else if (strcmp(item, "unplug") == 0) {
            fault->kind = FAULT_UNPLUG;
        } else if (strcmp(item, "corrupt") == 0) {
            fault->kind = FAULT_CORRUPT;
        } else if (strcmp(item, "gap") == 0) {
            fault->kind = FAULT_GAP;
            if (colon == NULL) {
                fault->arg = 1;
            }
        } else if (strcmp(item, "eio") == 0) {
            fault->kind = FAULT_EIO;
        } else {
            fprintf(stderr, "v4l2emu: unknown fault kind '%s'\n", item);
            continue;
        }
        dev.n_faults++;
    }
}

/* Width and height from the first SOF marker of a JPEG file, 0 if none is found. */
static void jpeg_size(const unsigned char *data, uint32_t len, uint32_t *width, uint32_t *height)
{
    *width = 0;
    *height = 0;
    uint32_t pos = 2;
    while (pos + 9 < len) {
        if (data[pos] != 0xFF) {
            return;
        }
        unsigned char marker = data[pos + 1];
        uint32_t segment = ((uint32_t)data[pos + 2] << 8) | data[pos + 3];
        if (marker >= 0xC0 && marker <= 0xC2) {
            *height = ((uint32_t)data[pos + 5] << 8) | data[pos + 6];
            *width = ((uint32_t)data[pos + 7] << 8) | data[pos + 8];
            return;
        }
        pos += 2 + segment;
    }
}

static void load_mjpeg_frames(const char *dir)
{
    for (unsigned i = 0; i < MAX_MJPEG_FRAMES; i++) {
        char name[4096];
        snprintf(name, sizeof(name), "%s/frame_%04u.jpg", dir, i);
        FILE *file = fopen(name, "rb");
        if (file == NULL) {
            break;
        }
        fseek(file, 0, SEEK_END);
        long len = ftell(file);
        fseek(file, 0, SEEK_SET);
        unsigned char *data = len > 0 ? malloc((size_t)len) : NULL;
        if (data == NULL || fread(data, 1, (size_t)len, file) != (size_t)len) {
            free(data);
            fclose(file);
            break;
        }
        fclose(file);
        uint32_t width, height;
        jpeg_size(data, (uint32_t)len, &width, &height);
        if (width == 0 || (dev.n_mjpeg > 0 && (width != dev.mjpeg_width || height != dev.mjpeg_height))) {
            fprintf(stderr, "v4l2emu: %s: no SOF or a size unlike the first frame\n", name);
            free(data);
            break;
        }
        dev.mjpeg_width = width;
        dev.mjpeg_height = height;
        dev.mjpeg[dev.n_mjpeg] = data;
        dev.mjpeg_len[dev.n_mjpeg] = (uint32_t)len;
        if ((uint32_t)len > dev.mjpeg_max_len) {
            dev.mjpeg_max_len = (uint32_t)len;
        }
        dev.n_mjpeg++;
    }
}

static void configure(void)
{
    configuring = 1;
    for (unsigned i = 0; i < MAX_OPENS; i++) {
        dev.opens[i].fd = -1;
    }
    const char *path = getenv("V4L2EMU_PATH");
    if (path == NULL || path[0] == '\0') {
        configuring = 0;
        return;
    }
    snprintf(dev.path, sizeof(dev.path), "%s", path);
    const char *faults = getenv("V4L2EMU_FAULTS");
    if (faults != NULL) {
        parse_faults(faults);
    }
    const char *mjpeg_dir = getenv("V4L2EMU_MJPEG_DIR");
    if (mjpeg_dir != NULL && mjpeg_dir[0] != '\0') {
        load_mjpeg_frames(mjpeg_dir);
    }
    dev.pixelformat = V4L2_PIX_FMT_YUYV;
    dev.width = raw_sizes[0][0];
    dev.height = raw_sizes[0][1];
    dev.interval_num = 1;
    dev.interval_den = 30;
    __atomic_store_n(&dev.configured, 1, __ATOMIC_RELEASE);
    configuring = 0;
}

static int emulation_enabled(void)
{
    if (configuring) {
        return 0;
    }
    pthread_once(&config_once, configure);
    return __atomic_load_n(&dev.configured, __ATOMIC_ACQUIRE);
}

/* Locked helpers below assume dev.lock is held. */

static struct emu_open *find_open(int fd)
{
    if (fd < 0) {
        return NULL;
    }
    for (unsigned i = 0; i < MAX_OPENS; i++) {
        if (dev.opens[i].fd == fd) {
            return &dev.opens[i];
        }
    }
    return NULL;
}

static int is_our_fd(int fd)
{
    if (fd < 0 || !emulation_enabled()) {
        return 0;
    }
    pthread_mutex_lock(&dev.lock);
    int ours = find_open(fd) != NULL;
    pthread_mutex_unlock(&dev.lock);
    return ours;
}

static int n_formats(void)
{
    return (int)(sizeof(raw_formats) / sizeof(raw_formats[0])) + (dev.n_mjpeg > 0 ? 1 : 0);
}

static const struct format_info *format_at(uint32_t index)
{
    uint32_t n_raw = sizeof(raw_formats) / sizeof(raw_formats[0]);
    if (index < n_raw) {
        return &raw_formats[index];
    }
    if (index == n_raw && dev.n_mjpeg > 0) {
        return &mjpeg_format;
    }
    return NULL;
}

static int format_supported(uint32_t fourcc)
{
    for (int i = 0; i < n_formats(); i++) {
        if (format_at((uint32_t)i)->fourcc == fourcc) {
            return 1;
        }
    }
    return 0;
}

static int n_sizes(uint32_t fourcc)
{
    if (fourcc == V4L2_PIX_FMT_MJPEG) {
        return dev.n_mjpeg > 0 ? 1 : 0;
    }
    return format_supported(fourcc) ? (int)(sizeof(raw_sizes) / sizeof(raw_sizes[0])) : 0;
}

static void size_at(uint32_t fourcc, int index, uint32_t *width, uint32_t *height)
{
    if (fourcc == V4L2_PIX_FMT_MJPEG) {
        *width = dev.mjpeg_width;
        *height = dev.mjpeg_height;
    } else {
        *width = raw_sizes[index][0];
        *height = raw_sizes[index][1];
    }
}

static uint32_t bytes_per_pixel(uint32_t fourcc)
{
    switch (fourcc) {
    case V4L2_PIX_FMT_YUYV:
        return 2;
    case V4L2_PIX_FMT_RGB24:
        return 3;
    case V4L2_PIX_FMT_GREY:
        return 1;
    default:
        return 0;
    }
}

static uint32_t image_size(uint32_t fourcc, uint32_t width, uint32_t height)
{
    if (fourcc == V4L2_PIX_FMT_MJPEG) {
        uint32_t bound = width * height * 2;
        return dev.mjpeg_max_len > bound ? dev.mjpeg_max_len : bound;
    }
    return width * height * bytes_per_pixel(fourcc);
}

static void fill_pix_format(struct v4l2_pix_format *pix)
{
    memset(pix, 0, sizeof(*pix));
    pix->width = dev.width;
    pix->height = dev.height;
    pix->pixelformat = dev.pixelformat;
    pix->field = V4L2_FIELD_NONE;
    pix->bytesperline = dev.width * bytes_per_pixel(dev.pixelformat);
    pix->sizeimage = image_size(dev.pixelformat, dev.width, dev.height);
    pix->colorspace =
        dev.pixelformat == V4L2_PIX_FMT_MJPEG ? V4L2_COLORSPACE_JPEG : V4L2_COLORSPACE_SRGB;
}

/* The supported size nearest to the request (sum of absolute differences). */
static void nearest_size(uint32_t fourcc, uint32_t *width, uint32_t *height)
{
    uint32_t best_w = 0, best_h = 0;
    int64_t best_distance = -1;
    for (int i = 0; i < n_sizes(fourcc); i++) {
        uint32_t w, h;
        size_at(fourcc, i, &w, &h);
        int64_t distance = llabs((int64_t)w - *width) + llabs((int64_t)h - *height);
        if (best_distance < 0 || distance < best_distance) {
            best_distance = distance;
            best_w = w;
            best_h = h;
        }
    }
    *width = best_w;
    *height = best_h;
}

static struct control *find_control(uint32_t id)
{
    for (unsigned i = 0; i < N_CONTROLS; i++) {
        if (controls[i].id == id) {
            return &controls[i];
        }
    }
    return NULL;
}

static int control_inactive(const struct control *control)
{
    if (control->auto_id == 0) {
        return 0;
    }
    const struct control *switch_control = find_control(control->auto_id);
    if (control->auto_id == V4L2_CID_EXPOSURE_AUTO) {
        return switch_control->value != control->auto_manual_value;
    }
    return switch_control->value != 0;
}

/* ---------------------------------------------------------------- frame generation */

static const unsigned char bar_colours[8][3] = {
    {255, 255, 255}, {255, 255, 0}, {0, 255, 255}, {0, 255, 0},
    {255, 0, 255},   {255, 0, 0},   {0, 0, 255},   {0, 0, 0},
};

/* The pattern: eight vertical colour bars, and a grey block of side height/8 whose cell on a
 * (width/side) x 8 grid is sequence % cells, in row-major order. */
static void pattern_rgb(uint32_t x, uint32_t y, uint32_t sequence, unsigned char rgb[3])
{
    uint32_t side = dev.height / 8;
    uint32_t columns = dev.width / side;
    uint32_t cell = sequence % (columns * 8);
    uint32_t block_x = (cell % columns) * side;
    uint32_t block_y = (cell / columns) * side;
    if (x >= block_x && x < block_x + side && y >= block_y && y < block_y + side) {
        rgb[0] = rgb[1] = rgb[2] = 128;
        return;
    }
    memcpy(rgb, bar_colours[x * 8 / dev.width], 3);
}

static unsigned char clamp_byte(int value)
{
    return (unsigned char)(value < 0 ? 0 : value > 255 ? 255 : value);
}

static void generate_raw(unsigned char *out, uint32_t sequence)
{
    for (uint32_t y = 0; y < dev.height; y++) {
        for (uint32_t x = 0; x < dev.width; x += 2) {
            unsigned char a[3], b[3];
            pattern_rgb(x, y, sequence, a);
            pattern_rgb(x + 1, y, sequence, b);
            switch (dev.pixelformat) {
            case V4L2_PIX_FMT_YUYV: {
                /* BT.601, limited range; chroma is the mean of the pixel pair. */
                int r = (a[0] + b[0]) / 2, g = (a[1] + b[1]) / 2, bl = (a[2] + b[2]) / 2;
                unsigned char *p = out + (size_t)y * dev.width * 2 + (size_t)x * 2;
                p[0] = clamp_byte(((66 * a[0] + 129 * a[1] + 25 * a[2] + 128) >> 8) + 16);
                p[1] = clamp_byte(((-38 * r - 74 * g + 112 * bl + 128) >> 8) + 128);
                p[2] = clamp_byte(((66 * b[0] + 129 * b[1] + 25 * b[2] + 128) >> 8) + 16);
                p[3] = clamp_byte(((112 * r - 94 * g - 18 * bl + 128) >> 8) + 128);
                break;
            }
            case V4L2_PIX_FMT_RGB24: {
                unsigned char *p = out + (size_t)y * dev.width * 3 + (size_t)x * 3;
                memcpy(p, a, 3);
                memcpy(p + 3, b, 3);
                break;
            }
            case V4L2_PIX_FMT_GREY: {
                /* Full-range BT.601 luma. */
                unsigned char *p = out + (size_t)y * dev.width + x;
                p[0] = (unsigned char)((77 * a[0] + 150 * a[1] + 29 * a[2] + 128) >> 8);
                p[1] = (unsigned char)((77 * b[0] + 150 * b[1] + 29 * b[2] + 128) >> 8);
                break;
            }
            default:
                return;
            }
        }
    }
}

static void release_buffers(void)
{
    if (dev.view != NULL) {
        REAL(real_munmap_p, "munmap")(dev.view, dev.buffer_stride * dev.n_buffers);
    }
    dev.view = NULL;
    dev.n_buffers = 0;
    dev.buffers_owner = -1;
    dev.streaming = 0;
    dev.queue_len = 0;
    dev.done_len = 0;
    dev.queue_error = 0;
    memset(dev.buffers, 0, sizeof(dev.buffers));
}

static void unplug(int64_t now, int64_t absent_ms)
{
    char message[128];
    snprintf(message, sizeof(message), "unplugged at frame %llu for %lld ms",
             (unsigned long long)dev.frames_produced, (long long)absent_ms);
    log_line(message);
    dev.generation++;
    dev.absent_until_ns = now + absent_ms * NS_PER_MS;
    release_buffers();
}

/* Fills queued buffers with every frame due by `now`. Without a queued buffer a due frame
 * waits (the emulator never drops on its own: every sequence gap is an injected one). */
static void produce_due_frames(int64_t now)
{
    int64_t interval_ns = (int64_t)dev.interval_num * NS_PER_S / dev.interval_den;
    while (dev.streaming && !dev.queue_error && dev.next_due_ns <= now && dev.queue_len > 0) {
        int corrupt = 0;
        for (unsigned i = 0; i < dev.n_faults; i++) {
            struct fault *fault = &dev.faults[i];
            if (fault->done || fault->at_frame != dev.frames_produced) {
                continue;
            }
            fault->done = 1;
            switch (fault->kind) {
            case FAULT_STALL:
                dev.next_due_ns += fault->arg * NS_PER_MS;
                break;
            case FAULT_UNPLUG:
                unplug(now, fault->arg);
                return;
            case FAULT_EIO:
                dev.queue_error = 1;
                return;
            case FAULT_GAP:
                dev.sequence += (uint32_t)fault->arg;
                break;
            case FAULT_CORRUPT:
                corrupt = 1;
                break;
            }
        }
        if (dev.next_due_ns > now) {
            continue; /* a stall moved this frame later */
        }
        unsigned index = dev.queue_order[0];
        memmove(dev.queue_order, dev.queue_order + 1, (dev.queue_len - 1) * sizeof(unsigned));
        dev.queue_len--;
        struct emu_buffer *buffer = &dev.buffers[index];
        unsigned char *memory = dev.view + dev.buffer_stride * index;
        buffer->flags = V4L2_BUF_FLAG_TIMESTAMP_MONOTONIC | V4L2_BUF_FLAG_TSTAMP_SRC_EOF;
        if (dev.pixelformat == V4L2_PIX_FMT_MJPEG) {
            unsigned frame = dev.sequence % dev.n_mjpeg;
            memcpy(memory, dev.mjpeg[frame], dev.mjpeg_len[frame]);
            /* Corrupt MJPEG as USB cameras send it: a frame cut short, with no EOI. */
            buffer->bytesused = corrupt ? dev.mjpeg_len[frame] / 2 : dev.mjpeg_len[frame];
        } else {
            generate_raw(memory, dev.sequence);
            buffer->bytesused = dev.sizeimage;
            if (corrupt) {
                buffer->flags |= V4L2_BUF_FLAG_ERROR;
            }
        }
        buffer->sequence = dev.sequence++;
        buffer->timestamp_ns = dev.next_due_ns;
        buffer->queued = 0;
        buffer->done = 1;
        dev.done_order[dev.done_len++] = index;
        dev.frames_produced++;
        dev.next_due_ns += interval_ns;
        if (dev.next_due_ns < now - interval_ns) {
            dev.next_due_ns = now; /* a late consumer gets no burst of stale frames */
        }
    }
}

/* When the next frame could be ready, or -1 if none can come without another call. */
static int64_t next_event_ns(void)
{
    if (!dev.streaming || dev.queue_error || dev.queue_len == 0) {
        return -1;
    }
    return dev.next_due_ns;
}

/* ---------------------------------------------------------------- ioctls */

static void fill_v4l2_buffer(struct v4l2_buffer *out, unsigned index)
{
    const struct emu_buffer *buffer = &dev.buffers[index];
    uint32_t type = out->type;
    memset(out, 0, sizeof(*out));
    out->type = type;
    out->index = index;
    out->memory = V4L2_MEMORY_MMAP;
    out->length = dev.sizeimage;
    out->m.offset = (uint32_t)(dev.buffer_stride * index);
    out->field = V4L2_FIELD_NONE;
    out->bytesused = buffer->bytesused;
    out->sequence = buffer->sequence;
    out->timestamp.tv_sec = buffer->timestamp_ns / NS_PER_S;
    out->timestamp.tv_usec = (buffer->timestamp_ns % NS_PER_S) / 1000;
    out->flags = buffer->flags | V4L2_BUF_FLAG_MAPPED;
    if (buffer->queued) {
        out->flags |= V4L2_BUF_FLAG_QUEUED;
    }
    if (buffer->done) {
        out->flags |= V4L2_BUF_FLAG_DONE;
    }
}

static int request_buffers(int fd, struct v4l2_requestbuffers *request)
{
    if (request->type != V4L2_BUF_TYPE_VIDEO_CAPTURE || request->memory != V4L2_MEMORY_MMAP) {
        return -EINVAL;
    }
    if (dev.buffers_owner >= 0 && dev.buffers_owner != fd) {
        return -EBUSY;
    }
    if (request->count == 0) {
        if (dev.n_mappings > 0) {
            return -EBUSY;
        }
        release_buffers();
        return 0;
    }
    if (dev.n_buffers > 0) {
        return -EBUSY;
    }
    unsigned count = request->count > MAX_BUFFERS ? MAX_BUFFERS : request->count;
    long page = sysconf(_SC_PAGESIZE);
    dev.sizeimage = image_size(dev.pixelformat, dev.width, dev.height);
    dev.buffer_stride = ((size_t)dev.sizeimage + (size_t)page - 1) / (size_t)page * (size_t)page;
    if (ftruncate(fd, (off_t)(dev.buffer_stride * count)) != 0) {
        return -ENOMEM;
    }
    void *view = REAL(real_mmap_p, "mmap")(NULL, dev.buffer_stride * count,
                                             PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (view == MAP_FAILED) {
        return -ENOMEM;
    }
    dev.view = view;
    dev.n_buffers = count;
    dev.buffers_owner = fd;
    memset(dev.buffers, 0, sizeof(dev.buffers));
    request->count = count;
    request->capabilities = V4L2_BUF_CAP_SUPPORTS_MMAP;
    return 0;
}

static int emu_ioctl_locked(struct emu_open *open_file, unsigned long request, void *arg)
{
    int fd = open_file->fd;
    switch (request) {
    case VIDIOC_QUERYCAP: {
        struct v4l2_capability *cap = arg;
        memset(cap, 0, sizeof(*cap));
        snprintf((char *)cap->driver, sizeof(cap->driver), "v4l2emu");
        snprintf((char *)cap->card, sizeof(cap->card), "v4l2emu Emulated Camera");
        snprintf((char *)cap->bus_info, sizeof(cap->bus_info), "platform:v4l2emu");
        cap->version = (6 << 16) | (1 << 8);
        cap->device_caps = V4L2_CAP_VIDEO_CAPTURE | V4L2_CAP_STREAMING;
        cap->capabilities = cap->device_caps | V4L2_CAP_DEVICE_CAPS;
        return 0;
    }
    case VIDIOC_ENUM_FMT: {
        struct v4l2_fmtdesc *desc = arg;
        const struct format_info *info = format_at(desc->index);
        if (desc->type != V4L2_BUF_TYPE_VIDEO_CAPTURE || info == NULL) {
            return -EINVAL;
        }
        uint32_t index = desc->index, type = desc->type;
        memset(desc, 0, sizeof(*desc));
        desc->index = index;
        desc->type = type;
        desc->pixelformat = info->fourcc;
        desc->flags = info->flags;
        snprintf((char *)desc->description, sizeof(desc->description), "%s", info->description);
        return 0;
    }
    case VIDIOC_G_FMT: {
        struct v4l2_format *format = arg;
        if (format->type != V4L2_BUF_TYPE_VIDEO_CAPTURE) {
            return -EINVAL;
        }
        fill_pix_format(&format->fmt.pix);
        return 0;
    }
    case VIDIOC_S_FMT:
    case VIDIOC_TRY_FMT: {
        struct v4l2_format *format = arg;
        if (format->type != V4L2_BUF_TYPE_VIDEO_CAPTURE) {
            return -EINVAL;
        }
        if (request == VIDIOC_S_FMT && dev.n_buffers > 0) {
            return -EBUSY;
        }
        uint32_t fourcc = format->fmt.pix.pixelformat;
        if (!format_supported(fourcc)) {
            fourcc = V4L2_PIX_FMT_YUYV; /* as drivers do: an unknown format becomes the default */
        }
        uint32_t width = format->fmt.pix.width, height = format->fmt.pix.height;
        nearest_size(fourcc, &width, &height);
        uint32_t saved_format = dev.pixelformat, saved_width = dev.width, saved_height = dev.height;
        dev.pixelformat = fourcc;
        dev.width = width;
        dev.height = height;
        fill_pix_format(&format->fmt.pix);
        if (request == VIDIOC_TRY_FMT) {
            dev.pixelformat = saved_format;
            dev.width = saved_width;
            dev.height = saved_height;
        }
        return 0;
    }
    case VIDIOC_ENUM_FRAMESIZES: {
        struct v4l2_frmsizeenum *size = arg;
        if ((int)size->index >= n_sizes(size->pixel_format)) {
            return -EINVAL;
        }
        size->type = V4L2_FRMSIZE_TYPE_DISCRETE;
        size_at(size->pixel_format, (int)size->index, &size->discrete.width,
                &size->discrete.height);
        return 0;
    }
    case VIDIOC_ENUM_FRAMEINTERVALS: {
        struct v4l2_frmivalenum *interval = arg;
        int size_known = 0;
        for (int i = 0; i < n_sizes(interval->pixel_format); i++) {
            uint32_t w, h;
            size_at(interval->pixel_format, i, &w, &h);
            size_known |= w == interval->width && h == interval->height;
        }
        if (!size_known || interval->index >= sizeof(frame_rates) / sizeof(frame_rates[0])) {
            return -EINVAL;
        }
        interval->type = V4L2_FRMIVAL_TYPE_DISCRETE;
        interval->discrete.numerator = 1;
        interval->discrete.denominator = frame_rates[interval->index];
        return 0;
    }
    case VIDIOC_G_PARM:
    case VIDIOC_S_PARM: {
        struct v4l2_streamparm *parm = arg;
        if (parm->type != V4L2_BUF_TYPE_VIDEO_CAPTURE) {
            return -EINVAL;
        }
        if (request == VIDIOC_S_PARM) {
            struct v4l2_fract asked = parm->parm.capture.timeperframe;
            if (asked.numerator != 0 && asked.denominator != 0) {
                double fps = (double)asked.denominator / asked.numerator;
                uint32_t best = frame_rates[0];
                for (unsigned i = 0; i < sizeof(frame_rates) / sizeof(frame_rates[0]); i++) {
                    if (abs((int)frame_rates[i] - (int)(fps + 0.5)) < abs((int)best - (int)(fps + 0.5))) {
                        best = frame_rates[i];
                    }
                }
                dev.interval_num = 1;
                dev.interval_den = best;
            }
        }
        memset(&parm->parm, 0, sizeof(parm->parm));
        parm->parm.capture.capability = V4L2_CAP_TIMEPERFRAME;
        parm->parm.capture.timeperframe.numerator = dev.interval_num;
        parm->parm.capture.timeperframe.denominator = dev.interval_den;
        parm->parm.capture.readbuffers = MAX_BUFFERS;
        return 0;
    }
    case VIDIOC_REQBUFS:
        return request_buffers(fd, arg);
    case VIDIOC_QUERYBUF:
    case VIDIOC_QBUF:
    case VIDIOC_DQBUF: {
        struct v4l2_buffer *buffer = arg;
        if (buffer->type != V4L2_BUF_TYPE_VIDEO_CAPTURE || buffer->memory != V4L2_MEMORY_MMAP ||
            dev.buffers_owner != fd) {
            return -EINVAL;
        }
        if (request == VIDIOC_DQBUF) {
            if (dev.queue_error) {
                return -EIO;
            }
            produce_due_frames(monotonic_ns());
            if (dev.generation != open_file->generation) {
                return -ENODEV;
            }
            if (dev.done_len == 0) {
                return dev.streaming ? -EAGAIN : -EINVAL;
            }
            unsigned index = dev.done_order[0];
            memmove(dev.done_order, dev.done_order + 1, (dev.done_len - 1) * sizeof(unsigned));
            dev.done_len--;
            dev.buffers[index].done = 0;
            fill_v4l2_buffer(buffer, index);
            return 0;
        }
        if (buffer->index >= dev.n_buffers) {
            return -EINVAL;
        }
        if (request == VIDIOC_QBUF) {
            struct emu_buffer *slot = &dev.buffers[buffer->index];
            if (slot->queued || slot->done) {
                return -EINVAL;
            }
            slot->queued = 1;
            dev.queue_order[dev.queue_len++] = buffer->index;
        }
        fill_v4l2_buffer(buffer, buffer->index);
        return 0;
    }
    case VIDIOC_STREAMON:
        if (*(int *)arg != V4L2_BUF_TYPE_VIDEO_CAPTURE || dev.buffers_owner != fd) {
            return -EINVAL;
        }
        if (!dev.streaming) {
            dev.streaming = 1;
            dev.sequence = 0;
            dev.next_due_ns =
                monotonic_ns() + (int64_t)dev.interval_num * NS_PER_S / dev.interval_den;
        }
        return 0;
    case VIDIOC_STREAMOFF:
        if (*(int *)arg != V4L2_BUF_TYPE_VIDEO_CAPTURE) {
            return -EINVAL;
        }
        if (dev.buffers_owner == fd) {
            dev.streaming = 0;
            dev.queue_len = 0;
            dev.done_len = 0;
            dev.queue_error = 0;
            for (unsigned i = 0; i < dev.n_buffers; i++) {
                dev.buffers[i].queued = 0;
                dev.buffers[i].done = 0;
            }
        }
        return 0;
    case VIDIOC_QUERYCTRL: {
        struct v4l2_queryctrl *query = arg;
        const struct control *found = NULL;
        if (query->id & V4L2_CTRL_FLAG_NEXT_CTRL) {
            uint32_t after = query->id & ~(V4L2_CTRL_FLAG_NEXT_CTRL | V4L2_CTRL_FLAG_NEXT_COMPOUND);
            for (unsigned i = 0; i < N_CONTROLS; i++) {
                if (controls[i].id > after && (found == NULL || controls[i].id < found->id)) {
                    found = &controls[i];
                }
            }
        } else {
            found = find_control(query->id);
        }
        if (found == NULL) {
            return -EINVAL;
        }
        memset(query, 0, sizeof(*query));
        query->id = found->id;
        query->type = found->type;
        snprintf((char *)query->name, sizeof(query->name), "%s", found->name);
        query->minimum = found->minimum;
        query->maximum = found->maximum;
        query->step = found->step;
        query->default_value = found->default_value;
        query->flags = control_inactive(found) ? V4L2_CTRL_FLAG_INACTIVE : 0;
        return 0;
    }
    case VIDIOC_QUERYMENU: {
        struct v4l2_querymenu *menu = arg;
        if (menu->id != V4L2_CID_EXPOSURE_AUTO) {
            return -EINVAL;
        }
        /* Like UVC cameras: only manual and aperture priority exist. */
        const char *name = menu->index == V4L2_EXPOSURE_MANUAL              ? "Manual Mode"
                           : menu->index == V4L2_EXPOSURE_APERTURE_PRIORITY ? "Aperture Priority Mode"
                                                                             : NULL;
        if (name == NULL) {
            return -EINVAL;
        }
        snprintf((char *)menu->name, sizeof(menu->name), "%s", name);
        return 0;
    }
    case VIDIOC_G_CTRL:
    case VIDIOC_S_CTRL: {
        struct v4l2_control *value = arg;
        struct control *control = find_control(value->id);
        if (control == NULL) {
            return -EINVAL;
        }
        if (request == VIDIOC_G_CTRL) {
            value->value = control->value;
            return 0;
        }
        if (control_inactive(control)) {
            return -EACCES; /* as UVC does for a control its auto mode owns */
        }
        if (control->type == V4L2_CTRL_TYPE_MENU) {
            if (value->value != V4L2_EXPOSURE_MANUAL && value->value != V4L2_EXPOSURE_APERTURE_PRIORITY) {
                return -EINVAL;
            }
            control->value = value->value;
            return 0;
        }
        /* Integers are clamped to the range and rounded to the step, as the kernel does. */
        int32_t v = value->value < control->minimum   ? control->minimum
                    : value->value > control->maximum ? control->maximum
                                                      : value->value;
        v = control->minimum + (v - control->minimum + control->step / 2) / control->step * control->step;
        control->value = v;
        value->value = v;
        return 0;
    }
    default:
        return -ENOTTY;
    }
}

static int emu_ioctl(int fd, unsigned long request, void *arg)
{
    pthread_mutex_lock(&dev.lock);
    struct emu_open *open_file = find_open(fd);
    int result;
    if (open_file == NULL) {
        result = -EBADF;
    } else if (open_file->generation != dev.generation) {
        result = -ENODEV;
    } else {
        result = emu_ioctl_locked(open_file, request, arg);
    }
    pthread_mutex_unlock(&dev.lock);

    /* A blocking DQBUF waits for the next frame, without holding the lock. */
    while (result == -EAGAIN && request == VIDIOC_DQBUF && open_file != NULL &&
           !open_file->nonblocking) {
        pthread_mutex_lock(&dev.lock);
        int64_t wake = next_event_ns();
        pthread_mutex_unlock(&dev.lock);
        sleep_until_ns(wake < 0 ? monotonic_ns() + 10 * NS_PER_MS : wake);
        pthread_mutex_lock(&dev.lock);
        result = open_file->generation != dev.generation ? -ENODEV
                                                         : emu_ioctl_locked(open_file, request, arg);
        pthread_mutex_unlock(&dev.lock);
    }
    if (result < 0) {
        errno = -result;
        return -1;
    }
    return result;
}

/* ---------------------------------------------------------------- intercepted calls */

static int path_is_ours(int dirfd, const char *path)
{
    if (path == NULL || !emulation_enabled()) {
        return 0;
    }
    return (path[0] == '/' || dirfd == AT_FDCWD) && strcmp(path, dev.path) == 0;
}

static int emu_open(int flags)
{
    pthread_mutex_lock(&dev.lock);
    int64_t now = monotonic_ns();
    if (now < dev.absent_until_ns) {
        pthread_mutex_unlock(&dev.lock);
        errno = ENOENT;
        return -1;
    }
    struct emu_open *slot = NULL;
    for (unsigned i = 0; i < MAX_OPENS && slot == NULL; i++) {
        if (dev.opens[i].fd < 0) {
            slot = &dev.opens[i];
        }
    }
    if (slot == NULL) {
        pthread_mutex_unlock(&dev.lock);
        errno = EMFILE;
        return -1;
    }
    int fd = memfd_create("v4l2emu", (flags & O_CLOEXEC) ? MFD_CLOEXEC : 0);
    if (fd >= 0) {
        slot->fd = fd;
        slot->generation = dev.generation;
        slot->nonblocking = (flags & O_NONBLOCK) != 0;
    }
    pthread_mutex_unlock(&dev.lock);
    return fd;
}

static mode_t mode_argument(int flags, va_list args)
{
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(args, int) : 0;
}

int open(const char *path, int flags, ...)
{
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_argument(flags, args);
    va_end(args);
    if (path_is_ours(AT_FDCWD, path)) {
        return emu_open(flags);
    }
    return REAL(real_open_p, "open")(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_argument(flags, args);
    va_end(args);
    if (path_is_ours(AT_FDCWD, path)) {
        return emu_open(flags);
    }
    return REAL(real_open64_p, "open64")(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_argument(flags, args);
    va_end(args);
    if (path_is_ours(dirfd, path)) {
        return emu_open(flags);
    }
    return REAL(real_openat_p, "openat")(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_argument(flags, args);
    va_end(args);
    if (path_is_ours(dirfd, path)) {
        return emu_open(flags);
    }
    return REAL(real_openat64_p, "openat64")(dirfd, path, flags, mode);
}

int close(int fd)
{
    if (is_our_fd(fd)) {
        pthread_mutex_lock(&dev.lock);
        if (dev.buffers_owner == fd) {
            dev.n_mappings = 0; /* the kernel keeps such mappings valid; so does the memfd */
            release_buffers();
        }
        struct emu_open *open_file = find_open(fd);
        if (open_file != NULL) {
            open_file->fd = -1;
        }
        pthread_mutex_unlock(&dev.lock);
    }
    return REAL(real_close_p, "close")(fd);
}

int ioctl(int fd, unsigned long request, ...)
{
    va_list args;
    va_start(args, request);
    void *arg = va_arg(args, void *);
    va_end(args);
    if (is_our_fd(fd)) {
        return emu_ioctl(fd, request, arg);
    }
    return REAL(real_ioctl_p, "ioctl")(fd, request, arg);
}

long syscall(long number, ...)
{
    va_list args;
    va_start(args, number);
    long a1 = va_arg(args, long), a2 = va_arg(args, long), a3 = va_arg(args, long);
    long a4 = va_arg(args, long), a5 = va_arg(args, long), a6 = va_arg(args, long);
    va_end(args);
    if (number == SYS_ioctl && is_our_fd((int)a1)) {
        return emu_ioctl((int)a1, (unsigned long)a2, (void *)a3);
    }
    return REAL(real_syscall_p, "syscall")(number, a1, a2, a3, a4, a5, a6);
}

static void *emu_mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset,
                      mmap_fn real)
{
    pthread_mutex_lock(&dev.lock);
    struct emu_open *open_file = find_open(fd);
    int error = 0;
    if (open_file == NULL) {
        error = EBADF;
    } else if (open_file->generation != dev.generation) {
        error = ENODEV;
    } else if (dev.buffers_owner != fd || offset < 0 || dev.buffer_stride == 0 ||
               (size_t)offset % dev.buffer_stride != 0 ||
               (size_t)offset / dev.buffer_stride >= dev.n_buffers || length > dev.buffer_stride) {
        error = EINVAL;
    } else if (dev.n_mappings == MAX_MAPPINGS) {
        error = ENOMEM;
    }
    void *result = MAP_FAILED;
    if (error == 0) {
        result = real(addr, length, prot, flags, fd, offset);
        if (result != MAP_FAILED) {
            dev.mappings[dev.n_mappings].addr = result;
            dev.mappings[dev.n_mappings].length = length;
            dev.n_mappings++;
        }
    }
    pthread_mutex_unlock(&dev.lock);
    if (error != 0) {
        errno = error;
    }
    return result;
}

void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
    if (fd >= 0 && is_our_fd(fd)) {
        return emu_mmap(addr, length, prot, flags, fd, offset, REAL(real_mmap_p, "mmap"));
    }
    return REAL(real_mmap_p, "mmap")(addr, length, prot, flags, fd, offset);
}

void *mmap64(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
{
    if (fd >= 0 && is_our_fd(fd)) {
        return emu_mmap(addr, length, prot, flags, fd, offset, REAL(real_mmap64_p, "mmap64"));
    }
    return REAL(real_mmap64_p, "mmap64")(addr, length, prot, flags, fd, offset);
}

int munmap(void *addr, size_t length)
{
    if (__atomic_load_n(&dev.n_mappings, __ATOMIC_RELAXED) > 0) {
        pthread_mutex_lock(&dev.lock);
        for (unsigned i = 0; i < dev.n_mappings; i++) {
            if (dev.mappings[i].addr == addr) {
                dev.mappings[i] = dev.mappings[dev.n_mappings - 1];
                dev.n_mappings--;
                break;
            }
        }
        pthread_mutex_unlock(&dev.lock);
    }
    return REAL(real_munmap_p, "munmap")(addr, length);
}

/* Readiness of one emulated fd, as the kernel's vb2 poll reports it. */
static short emu_revents(int fd, short events)
{
    struct emu_open *open_file = find_open(fd);
    if (open_file == NULL) {
        return POLLNVAL;
    }
    if (open_file->generation != dev.generation) {
        return POLLERR | POLLHUP;
    }
    if (dev.buffers_owner != fd || !dev.streaming || dev.queue_error) {
        return POLLERR;
    }
    produce_due_frames(monotonic_ns());
    if (open_file->generation != dev.generation) {
        return POLLERR | POLLHUP;
    }
    if (dev.queue_error) {
        return POLLERR;
    }
    return dev.done_len > 0 ? (short)(events & (POLLIN | POLLRDNORM)) : 0;
}

int poll(struct pollfd *fds, nfds_t nfds, int timeout)
{
    int any_ours = 0;
    if (emulation_enabled()) {
        for (nfds_t i = 0; i < nfds; i++) {
            any_ours |= is_our_fd(fds[i].fd);
        }
    }
    if (!any_ours) {
        return REAL(real_poll_p, "poll")(fds, nfds, timeout);
    }
    int64_t deadline = timeout < 0 ? -1 : monotonic_ns() + (int64_t)timeout * NS_PER_MS;
    for (;;) {
        int ready = 0, other_fds = 0;
        int64_t wake = -1;
        pthread_mutex_lock(&dev.lock);
        for (nfds_t i = 0; i < nfds; i++) {
            if (find_open(fds[i].fd) != NULL) {
                fds[i].revents = emu_revents(fds[i].fd, fds[i].events);
                int64_t next = next_event_ns();
                if (next >= 0 && (wake < 0 || next < wake)) {
                    wake = next;
                }
                ready += fds[i].revents != 0;
            } else {
                other_fds = 1;
            }
        }
        pthread_mutex_unlock(&dev.lock);
        if (other_fds) {
            /* Other fds are polled without waiting; this loop does the waiting. */
            for (nfds_t i = 0; i < nfds; i++) {
                if (!is_our_fd(fds[i].fd)) {
                    struct pollfd one = fds[i];
                    if (REAL(real_poll_p, "poll")(&one, 1, 0) > 0) {
                        fds[i].revents = one.revents;
                        ready++;
                    } else {
                        fds[i].revents = 0;
                    }
                }
            }
        }
        int64_t now = monotonic_ns();
        if (ready > 0) {
            return ready;
        }
        if (deadline >= 0 && now >= deadline) {
            return 0;
        }
        int64_t sleep_to = wake < 0 ? now + 10 * NS_PER_MS : wake;
        if (other_fds && sleep_to > now + NS_PER_MS) {
            sleep_to = now + NS_PER_MS;
        }
        if (deadline >= 0 && sleep_to > deadline) {
            sleep_to = deadline;
        }
        sleep_until_ns(sleep_to);
    }
}
