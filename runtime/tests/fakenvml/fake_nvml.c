/*
 * A fake libnvidia-ml.so.1 for tests: the real pynvml code path runs against it.
 *
 * Configuration: the environment variable FAKE_NVML_CONFIG names a JSON file. It is read again on
 * every nvmlInit*, so a test can change the "machine" between two backend instances in one process.
 *
 *   {
 *     "driver_version": "550.54.15",          string, default "0.0.0"
 *     "init_error": 0,                        nvmlReturn_t that nvmlInit* returns (9 = DRIVER_NOT_LOADED)
 *     "devices": [{
 *       "name": "NVIDIA H100 80GB HBM3",       "uuid": "GPU-...",
 *       "memory_total": 85520809984,           "memory_used": 0,           bytes
 *       "utilization": 0,                      "memory_utilization": 0,    percent
 *       "temperature": 30,                     degrees C
 *       "power_mw": 70000,                     "power_limit_mw": 700000,
 *       "cc_major": 9,                         "cc_minor": 0,
 *       "pci_bus_id": "00000000:18:00.0",
 *       "nvlink_peers": [1, 2],                one active NVLink per entry to that device index
 *       "nvlink_remote_bus_ids": ["..."],      one active NVLink per entry to a non-GPU endpoint (NVSwitch)
 *       "nvlink_inactive_links": 0,            links that exist but are down
 *       "processes": [{"pid": 1234, "used_memory": 1073741824}],   used_memory null = "not available"
 *       "unsupported": ["nvmlDeviceGetPowerUsage"]                   these return NVML_ERROR_NOT_SUPPORTED
 *     }]
 *   }
 *
 * A device without any NVLink answers NVML_ERROR_NOT_SUPPORTED to nvmlDeviceGetNvLinkState, as real
 * PCIe-only boards do; a link index past the device's links answers NVML_ERROR_INVALID_ARGUMENT.
 * A configuration error makes nvmlInit* return NVML_ERROR_UNKNOWN and print the field to stderr.
 *
 * Only the symbols that pynvml resolves for the agent's calls exist (checked against nvidia-ml-py
 * 13.615.71); any other call raises NVMLError_FunctionNotFound in Python, which exposes unexpected calls.
 * Built with -DFAKE_NVML_MINIMAL, the optional facts (utilisation, temperature, power, compute
 * capability, NVLink, processes) are absent too, like an old driver.
 *
 * Struct layouts follow pynvml's ctypes definitions (c_nvmlMemory_t, c_nvmlUtilization_t, nvmlPciInfo_t,
 * c_nvmlProcessInfo_v3_t).
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- NVML ABI (values from nvml.h / pynvml) ------------------------------------------------------- */
#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define NVML_ERROR_UNKNOWN 999
#define NVML_TEMPERATURE_GPU 0
#define NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE 32
#define NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE 16
#define NVML_NVLINK_MAX_LINKS 36
#define NVML_VALUE_NOT_AVAILABLE_ULL (~0ULL)

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

typedef struct {
    char busIdLegacy[NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE];
} nvmlPciInfo_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

/* --- The configured machine ------------------------------------------------------------------------ */
#define MAX_DEVICES 64
#define MAX_PROCESSES 64
#define MAX_UNSUPPORTED 16
#define TEXT 96

typedef struct {
    int active;
    int peer_index; /* >= 0: a GPU of this machine; -1: remote_bus_id is used */
    char remote_bus_id[NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE];
} fake_link;

typedef struct {
    char name[TEXT], uuid[TEXT], pci_bus_id[NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE];
    unsigned long long memory_total, memory_used;
    unsigned int utilization, memory_utilization, temperature, power_mw, power_limit_mw;
    int cc_major, cc_minor;
    int link_count;
    fake_link links[NVML_NVLINK_MAX_LINKS];
    int process_count;
    nvmlProcessInfo_t processes[MAX_PROCESSES];
    int unsupported_count;
    char unsupported[MAX_UNSUPPORTED][TEXT];
} fake_device;

static fake_device g_devices[MAX_DEVICES];
static int g_device_count = 0;
static char g_driver_version[TEXT] = "0.0.0";
static int g_init_count = 0;

/* --- A minimal JSON reader (objects, arrays, strings without unicode escapes, numbers, literals) --- */
typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype;

typedef struct jval {
    jtype type;
    unsigned long long uint_value; /* exact for non-negative integers */
    double num;
    char *str;
    int n;
    char **keys;       /* J_OBJ */
    struct jval *items; /* J_ARR and J_OBJ values */
} jval;

typedef struct {
    const char *p;
    const char *error;
} jparser;

static void skip_ws(jparser *ps) {
    while (*ps->p && isspace((unsigned char)*ps->p)) ps->p++;
}

static int parse_value(jparser *ps, jval *out);

static char *parse_string_raw(jparser *ps) {
    if (*ps->p != '"') {
        ps->error = "expected a string";
        return NULL;
    }
    ps->p++;
    size_t cap = 64, len = 0;
    char *buf = malloc(cap);
    while (*ps->p && *ps->p != '"') {
        char c = *ps->p++;
        if (c == '\\') {
            char e = *ps->p++;
            c = e == 'n' ? '\n' : e == 't' ? '\t' : e; /* \" \\ \/ and the rest verbatim */
        }
        if (len + 2 > cap) buf = realloc(buf, cap *= 2);
        buf[len++] = c;
    }
    if (*ps->p != '"') {
        free(buf);
        ps->error = "unterminated string";
        return NULL;
    }
    ps->p++;
    buf[len] = 0;
    return buf;
}

static int parse_container(jparser *ps, jval *out, char close, int is_object) {
    ps->p++;
    out->type = is_object ? J_OBJ : J_ARR;
    int cap = 8;
    out->items = calloc(cap, sizeof(jval));
    out->keys = is_object ? calloc(cap, sizeof(char *)) : NULL;
    skip_ws(ps);
    if (*ps->p == close) {
        ps->p++;
        return 1;
    }
    for (;;) {
        if (out->n == cap) {
            cap *= 2;
            out->items = realloc(out->items, cap * sizeof(jval));
            if (is_object) out->keys = realloc(out->keys, cap * sizeof(char *));
        }
        memset(&out->items[out->n], 0, sizeof(jval));
        skip_ws(ps);
        if (is_object) {
            char *key = parse_string_raw(ps);
            if (!key) return 0;
            out->keys[out->n] = key;
            skip_ws(ps);
            if (*ps->p != ':') {
                ps->error = "expected ':'";
                return 0;
            }
            ps->p++;
        }
        if (!parse_value(ps, &out->items[out->n])) return 0;
        out->n++;
        skip_ws(ps);
        if (*ps->p == ',') {
            ps->p++;
            continue;
        }
        if (*ps->p == close) {
            ps->p++;
            return 1;
        }
        ps->error = is_object ? "expected ',' or '}'" : "expected ',' or ']'";
        return 0;
    }
}

static int parse_value(jparser *ps, jval *out) {
    skip_ws(ps);
    char c = *ps->p;
    if (c == '{') return parse_container(ps, out, '}', 1);
    if (c == '[') return parse_container(ps, out, ']', 0);
    if (c == '"') {
        out->type = J_STR;
        out->str = parse_string_raw(ps);
        return out->str != NULL;
    }
    if (!strncmp(ps->p, "null", 4)) {
        out->type = J_NULL;
        ps->p += 4;
        return 1;
    }
    if (!strncmp(ps->p, "true", 4) || !strncmp(ps->p, "false", 5)) {
        out->type = J_BOOL;
        out->num = c == 't';
        ps->p += c == 't' ? 4 : 5;
        return 1;
    }
    if (c == '-' || isdigit((unsigned char)c)) {
        char *end;
        out->type = J_NUM;
        out->num = strtod(ps->p, &end);
        if (c != '-') out->uint_value = strtoull(ps->p, NULL, 10);
        ps->p = end;
        return 1;
    }
    ps->error = "unexpected character";
    return 0;
}

static void free_value(jval *v) {
    for (int i = 0; i < v->n; i++) {
        free_value(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->str);
}

static jval *member(jval *obj, const char *key) {
    if (obj->type != J_OBJ) return NULL;
    for (int i = 0; i < obj->n; i++)
        if (!strcmp(obj->keys[i], key)) return &obj->items[i];
    return NULL;
}

/* --- Loading the configuration --------------------------------------------------------------------- */
static int config_error(const char *path, const char *field, const char *what) {
    fprintf(stderr, "fake NVML: %s: field '%s': %s\n", path, field, what);
    return NVML_ERROR_UNKNOWN;
}

static int read_uint(jval *dev, const char *key, unsigned long long *out, int index, const char *path) {
    jval *v = member(dev, key);
    if (!v) return NVML_SUCCESS; /* keep the default */
    if (v->type != J_NUM || v->num < 0) {
        char field[TEXT];
        snprintf(field, sizeof field, "devices[%d].%s", index, key);
        return config_error(path, field, "must be a non-negative integer");
    }
    *out = v->uint_value;
    return NVML_SUCCESS;
}

static void copy_text(char *dst, size_t size, jval *v, const char *fallback) {
    snprintf(dst, size, "%s", v && v->type == J_STR ? v->str : fallback);
}

static int load_device(jval *dev, int index, fake_device *out, const char *path) {
    char field[TEXT];
    unsigned long long value;
    memset(out, 0, sizeof *out);
    if (dev->type != J_OBJ) {
        snprintf(field, sizeof field, "devices[%d]", index);
        return config_error(path, field, "must be an object");
    }
    copy_text(out->name, sizeof out->name, member(dev, "name"), "NVIDIA Fake GPU");
    char default_uuid[TEXT], default_bus[TEXT];
    snprintf(default_uuid, sizeof default_uuid, "GPU-00000000-0000-0000-0000-%012d", index);
    snprintf(default_bus, sizeof default_bus, "00000000:%02X:00.0", 0x10 + index);
    copy_text(out->uuid, sizeof out->uuid, member(dev, "uuid"), default_uuid);
    copy_text(out->pci_bus_id, sizeof out->pci_bus_id, member(dev, "pci_bus_id"), default_bus);
    out->cc_major = 9;
    out->power_limit_mw = 700000;
    int rc;
#define READ_FIELD(key, target)                                                                            \
    value = (target);                                                                                      \
    if ((rc = read_uint(dev, key, &value, index, path)) != NVML_SUCCESS) return rc;                       \
    (target) = value;
    READ_FIELD("memory_total", out->memory_total)
    READ_FIELD("memory_used", out->memory_used)
    READ_FIELD("utilization", out->utilization)
    READ_FIELD("memory_utilization", out->memory_utilization)
    READ_FIELD("temperature", out->temperature)
    READ_FIELD("power_mw", out->power_mw)
    READ_FIELD("power_limit_mw", out->power_limit_mw)
    READ_FIELD("cc_major", out->cc_major)
    READ_FIELD("cc_minor", out->cc_minor)
#undef READ_FIELD
    if (out->memory_used > out->memory_total) {
        snprintf(field, sizeof field, "devices[%d].memory_used", index);
        return config_error(path, field, "must not exceed memory_total");
    }

    jval *peers = member(dev, "nvlink_peers");
    if (peers && peers->type == J_ARR) {
        for (int i = 0; i < peers->n && out->link_count < NVML_NVLINK_MAX_LINKS; i++) {
            if (peers->items[i].type != J_NUM || peers->items[i].num < 0) {
                snprintf(field, sizeof field, "devices[%d].nvlink_peers[%d]", index, i);
                return config_error(path, field, "must be a device index");
            }
            fake_link *link = &out->links[out->link_count++];
            link->active = 1;
            link->peer_index = (int)peers->items[i].uint_value;
        }
    }
    jval *remotes = member(dev, "nvlink_remote_bus_ids");
    if (remotes && remotes->type == J_ARR) {
        for (int i = 0; i < remotes->n && out->link_count < NVML_NVLINK_MAX_LINKS; i++) {
            if (remotes->items[i].type != J_STR) {
                snprintf(field, sizeof field, "devices[%d].nvlink_remote_bus_ids[%d]", index, i);
                return config_error(path, field, "must be a PCI bus id string");
            }
            fake_link *link = &out->links[out->link_count++];
            link->active = 1;
            link->peer_index = -1;
            snprintf(link->remote_bus_id, sizeof link->remote_bus_id, "%s", remotes->items[i].str);
        }
    }
    unsigned long long inactive = 0;
    if ((rc = read_uint(dev, "nvlink_inactive_links", &inactive, index, path)) != NVML_SUCCESS) return rc;
    for (unsigned long long i = 0; i < inactive && out->link_count < NVML_NVLINK_MAX_LINKS; i++) {
        fake_link *link = &out->links[out->link_count++];
        link->active = 0;
        link->peer_index = -1;
    }

    jval *procs = member(dev, "processes");
    if (procs && procs->type == J_ARR) {
        for (int i = 0; i < procs->n && out->process_count < MAX_PROCESSES; i++) {
            jval *pid = member(&procs->items[i], "pid");
            jval *used = member(&procs->items[i], "used_memory");
            if (!pid || pid->type != J_NUM) {
                snprintf(field, sizeof field, "devices[%d].processes[%d].pid", index, i);
                return config_error(path, field, "must be an integer");
            }
            nvmlProcessInfo_t *p = &out->processes[out->process_count++];
            p->pid = (unsigned int)pid->uint_value;
            p->usedGpuMemory = (used && used->type == J_NUM) ? used->uint_value : NVML_VALUE_NOT_AVAILABLE_ULL;
            p->gpuInstanceId = p->computeInstanceId = 0xFFFFFFFFu; /* no MIG */
        }
    }
    jval *unsupported = member(dev, "unsupported");
    if (unsupported && unsupported->type == J_ARR) {
        for (int i = 0; i < unsupported->n && out->unsupported_count < MAX_UNSUPPORTED; i++)
            copy_text(out->unsupported[out->unsupported_count++], TEXT, &unsupported->items[i], "");
    }
    return NVML_SUCCESS;
}

static int load_config(void) {
    const char *path = getenv("FAKE_NVML_CONFIG");
    if (!path || !*path) {
        fprintf(stderr, "fake NVML: FAKE_NVML_CONFIG is not set; behaving as if the driver is not loaded\n");
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    FILE *f = fopen(path, "rb");
    if (!f) return config_error(path, "(file)", "cannot be opened");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = calloc(1, (size_t)size + 1);
    size_t got = fread(text, 1, (size_t)size, f);
    fclose(f);
    text[got] = 0;

    jparser ps = {text, NULL};
    jval root;
    memset(&root, 0, sizeof root);
    int rc = NVML_SUCCESS;
    if (!parse_value(&ps, &root) || root.type != J_OBJ) {
        rc = config_error(path, "(document)", ps.error ? ps.error : "must be a JSON object");
        goto done;
    }
    jval *init_error = member(&root, "init_error");
    if (init_error && init_error->type == J_NUM && init_error->uint_value != 0) {
        rc = (int)init_error->uint_value;
        goto done;
    }
    copy_text(g_driver_version, sizeof g_driver_version, member(&root, "driver_version"), "0.0.0");
    jval *devices = member(&root, "devices");
    g_device_count = 0;
    if (devices && devices->type == J_ARR) {
        if (devices->n > MAX_DEVICES) {
            rc = config_error(path, "devices", "too many devices for the fake (at most 64)");
            goto done;
        }
        for (int i = 0; i < devices->n; i++) {
            if ((rc = load_device(&devices->items[i], i, &g_devices[i], path)) != NVML_SUCCESS) goto done;
            g_device_count++;
        }
    }
    for (int i = 0; i < g_device_count; i++) {
        for (int l = 0; l < g_devices[i].link_count; l++) {
            fake_link *link = &g_devices[i].links[l];
            if (link->peer_index < 0) continue;
            if (link->peer_index >= g_device_count) {
                char field[TEXT];
                snprintf(field, sizeof field, "devices[%d].nvlink_peers", i);
                rc = config_error(path, field, "names a device index that does not exist");
                goto done;
            }
            snprintf(link->remote_bus_id, sizeof link->remote_bus_id, "%s",
                     g_devices[link->peer_index].pci_bus_id);
        }
    }
done:
    if (rc != NVML_SUCCESS) g_device_count = 0;
    free_value(&root);
    free(text);
    return rc;
}

/* --- Helpers ---------------------------------------------------------------------------------------- */
static fake_device *device_of(void *handle) {
    fake_device *dev = handle;
    if (g_init_count == 0 || dev < g_devices || dev >= g_devices + g_device_count) return NULL;
    return dev;
}

#define REQUIRE_DEVICE(handle, var)                                                                        \
    if (g_init_count == 0) return NVML_ERROR_UNINITIALIZED;                                               \
    fake_device *var = device_of(handle);                                                                  \
    if (!var) return NVML_ERROR_INVALID_ARGUMENT;

__attribute__((unused)) static int unsupported(const fake_device *dev, const char *function) {
    for (int i = 0; i < dev->unsupported_count; i++)
        if (!strcmp(dev->unsupported[i], function)) return 1;
    return 0;
}

#define OPTIONAL_FACT(dev) \
    if (unsupported(dev, __func__)) return NVML_ERROR_NOT_SUPPORTED;

static int copy_out(char *dst, unsigned int length, const char *src) {
    if (!dst) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

static void fill_pci(nvmlPciInfo_t *pci, const char *bus_id) {
    memset(pci, 0, sizeof *pci);
    snprintf(pci->busId, sizeof pci->busId, "%s", bus_id);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%s", bus_id);
    unsigned int function = 0;
    sscanf(bus_id, "%x:%x:%x.%x", &pci->domain, &pci->bus, &pci->device, &function);
    pci->pciDeviceId = 0x233010DE; /* GH100 [H100 SXM5 80GB], vendor 10DE */
}

/* --- The exported NVML functions ------------------------------------------------------------------- */
int nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    int rc = load_config();
    if (rc != NVML_SUCCESS) return rc;
    g_init_count++;
    return NVML_SUCCESS;
}

int nvmlShutdown(void) {
    if (g_init_count == 0) return NVML_ERROR_UNINITIALIZED;
    g_init_count--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(int result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    default: return "Unknown Error";
    }
}

int nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (g_init_count == 0) return NVML_ERROR_UNINITIALIZED;
    return copy_out(version, length, g_driver_version);
}

int nvmlDeviceGetCount_v2(unsigned int *count) {
    if (g_init_count == 0) return NVML_ERROR_UNINITIALIZED;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = (unsigned int)g_device_count;
    return NVML_SUCCESS;
}

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **device) {
    if (g_init_count == 0) return NVML_ERROR_UNINITIALIZED;
    if (!device || index >= (unsigned int)g_device_count) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &g_devices[index];
    return NVML_SUCCESS;
}

int nvmlDeviceGetName(void *handle, char *name, unsigned int length) {
    REQUIRE_DEVICE(handle, dev)
    return copy_out(name, length, dev->name);
}

int nvmlDeviceGetUUID(void *handle, char *uuid, unsigned int length) {
    REQUIRE_DEVICE(handle, dev)
    return copy_out(uuid, length, dev->uuid);
}

int nvmlDeviceGetMemoryInfo(void *handle, nvmlMemory_t *memory) {
    REQUIRE_DEVICE(handle, dev)
    if (!memory) return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = dev->memory_total;
    memory->used = dev->memory_used;
    memory->free = dev->memory_total - dev->memory_used;
    return NVML_SUCCESS;
}

int nvmlDeviceGetPciInfo_v3(void *handle, nvmlPciInfo_t *pci) {
    REQUIRE_DEVICE(handle, dev)
    if (!pci) return NVML_ERROR_INVALID_ARGUMENT;
    fill_pci(pci, dev->pci_bus_id);
    return NVML_SUCCESS;
}

#ifndef FAKE_NVML_MINIMAL
int nvmlDeviceGetUtilizationRates(void *handle, nvmlUtilization_t *utilization) {
    REQUIRE_DEVICE(handle, dev)
    OPTIONAL_FACT(dev)
    if (!utilization) return NVML_ERROR_INVALID_ARGUMENT;
    utilization->gpu = dev->utilization;
    utilization->memory = dev->memory_utilization;
    return NVML_SUCCESS;
}

int nvmlDeviceGetTemperature(void *handle, int sensor, unsigned int *temperature) {
    REQUIRE_DEVICE(handle, dev)
    OPTIONAL_FACT(dev)
    if (!temperature || sensor != NVML_TEMPERATURE_GPU) return NVML_ERROR_INVALID_ARGUMENT;
    *temperature = dev->temperature;
    return NVML_SUCCESS;
}

int nvmlDeviceGetPowerUsage(void *handle, unsigned int *power) {
    REQUIRE_DEVICE(handle, dev)
    OPTIONAL_FACT(dev)
    if (!power) return NVML_ERROR_INVALID_ARGUMENT;
    *power = dev->power_mw;
    return NVML_SUCCESS;
}

int nvmlDeviceGetEnforcedPowerLimit(void *handle, unsigned int *limit) {
    REQUIRE_DEVICE(handle, dev)
    OPTIONAL_FACT(dev)
    if (!limit) return NVML_ERROR_INVALID_ARGUMENT;
    *limit = dev->power_limit_mw;
    return NVML_SUCCESS;
}

int nvmlDeviceGetCudaComputeCapability(void *handle, int *major, int *minor) {
    REQUIRE_DEVICE(handle, dev)
    OPTIONAL_FACT(dev)
    if (!major || !minor) return NVML_ERROR_INVALID_ARGUMENT;
    *major = dev->cc_major;
    *minor = dev->cc_minor;
    return NVML_SUCCESS;
}

int nvmlDeviceGetNvLinkState(void *handle, unsigned int link, unsigned int *is_active) {
    REQUIRE_DEVICE(handle, dev)
    OPTIONAL_FACT(dev)
    if (dev->link_count == 0) return NVML_ERROR_NOT_SUPPORTED;
    if (!is_active || link >= (unsigned int)dev->link_count) return NVML_ERROR_INVALID_ARGUMENT;
    *is_active = (unsigned int)dev->links[link].active;
    return NVML_SUCCESS;
}

int nvmlDeviceGetNvLinkRemotePciInfo_v2(void *handle, unsigned int link, nvmlPciInfo_t *pci) {
    REQUIRE_DEVICE(handle, dev)
    OPTIONAL_FACT(dev)
    if (dev->link_count == 0) return NVML_ERROR_NOT_SUPPORTED;
    if (!pci || link >= (unsigned int)dev->link_count || !dev->links[link].active)
        return NVML_ERROR_INVALID_ARGUMENT;
    fill_pci(pci, dev->links[link].remote_bus_id);
    return NVML_SUCCESS;
}

int nvmlDeviceGetComputeRunningProcesses_v3(void *handle, unsigned int *count, nvmlProcessInfo_t *infos) {
    REQUIRE_DEVICE(handle, dev)
    OPTIONAL_FACT(dev)
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int needed = (unsigned int)dev->process_count;
    if (*count < needed || (needed > 0 && !infos)) {
        *count = needed;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    memcpy(infos, dev->processes, needed * sizeof(nvmlProcessInfo_t));
    *count = needed;
    return NVML_SUCCESS;
}
#endif /* FAKE_NVML_MINIMAL */
