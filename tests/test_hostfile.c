/* Open MPI hostfiles: valid files sum their slots; malformed lines are refused naming file and line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "launch_internal.h"
#include <sovtrain/launch.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char path[64];

static void write_hostfile(const char *text) {
    snprintf(path, sizeof path, "/tmp/sovtrain-hostfile-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
}

static void valid_hostfile_sums_slots(void **state) {
    (void)state;
    write_hostfile("# two nodes\nnode-a slots=4\n\n  node-b.cluster.local slots=2 max_slots=8  # gpu box\nnode-c\n");
    int slots = 0;
    assert_int_equal(sov_hostfile_check(path, &slots), SOV_OK);
    assert_int_equal(slots, 7);
    unlink(path);
}

static void check_bad(const char *text, const char *needle) {
    write_hostfile(text);
    int slots;
    assert_int_equal(sov_hostfile_check(path, &slots), SOV_ERR_FORMAT);
    if (!strstr(sov_last_error(), needle) || !strstr(sov_last_error(), path))
        fail_msg("error \"%s\" should name %s and \"%s\"", sov_last_error(), path, needle);
    unlink(path);
}

static void malformed_hostfiles_are_refused(void **state) {
    (void)state;
    check_bad("node-a slots=4\nnode-b slots=zero\n", ":2:");
    check_bad("node-a slots=-1\n", ":1:");
    check_bad("node-a cpus=4\n", "unknown hostfile key");
    check_bad("node-a 4\n", "KEY=VALUE");
    check_bad("node;rm -rf / slots=1\n", "not a host name");
    check_bad("# only comments\n\n", "names no hosts");
}

static void missing_hostfile(void **state) {
    (void)state;
    int slots;
    assert_int_equal(sov_hostfile_check("/nonexistent/hosts", &slots), SOV_ERR_IO);
    assert_non_null(strstr(sov_last_error(), "/nonexistent/hosts"));
}

static void slurm_first_host(void **state) {
    (void)state;
    char h[64];
    assert_true(sov_slurm_first_host("vm", h, sizeof h));
    assert_string_equal(h, "vm");
    assert_true(sov_slurm_first_host("node[07-10,12],gpu3", h, sizeof h));
    assert_string_equal(h, "node07");
    assert_true(sov_slurm_first_host("gpu3,node[1-2]", h, sizeof h));
    assert_string_equal(h, "gpu3");
    assert_true(sov_slurm_first_host("rack[2-3]-a,x", h, sizeof h));
    assert_string_equal(h, "rack2-a");
    assert_false(sov_slurm_first_host("", h, sizeof h));
    assert_false(sov_slurm_first_host("node[", h, sizeof h));
    assert_false(sov_slurm_first_host("[1-2]", h, sizeof h));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(slurm_first_host),
        cmocka_unit_test(valid_hostfile_sums_slots),
        cmocka_unit_test(malformed_hostfiles_are_refused),
        cmocka_unit_test(missing_hostfile),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
