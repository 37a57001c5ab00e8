/* Prints VDUSE ioctl numbers, struct sizes and offsets from the installed
 * <linux/vduse.h> as JSON, for uapi_test.ts to compare with transports/vduse/uapi.ts. */
#include <stddef.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <linux/vduse.h>

#define N(x) printf("\"%s\": %lu,\n", #x, (unsigned long)(x))
#define S(x) printf("\"sizeof %s\": %lu,\n", #x, (unsigned long)sizeof(struct x))
#define O(s, f) printf("\"offsetof %s.%s\": %lu,\n", #s, #f, (unsigned long)offsetof(struct s, f))

int main(void) {
  printf("{\n");
  N(VDUSE_GET_API_VERSION); N(VDUSE_SET_API_VERSION); N(VDUSE_CREATE_DEV);
  N(VDUSE_DESTROY_DEV); N(VDUSE_IOTLB_GET_FD); N(VDUSE_DEV_GET_FEATURES);
  N(VDUSE_DEV_SET_CONFIG); N(VDUSE_DEV_INJECT_CONFIG_IRQ); N(VDUSE_VQ_SETUP);
  N(VDUSE_VQ_GET_INFO); N(VDUSE_VQ_SETUP_KICKFD); N(VDUSE_VQ_INJECT_IRQ);
#ifdef VDUSE_IOTLB_REG_UMEM
  N(VDUSE_IOTLB_REG_UMEM); N(VDUSE_IOTLB_DEREG_UMEM); N(VDUSE_IOTLB_GET_INFO);
  S(vduse_iova_umem); S(vduse_iova_info);
#endif
#ifdef VDUSE_IOTLB_GET_FD2
  N(VDUSE_IOTLB_GET_FD2); S(vduse_iotlb_entry_v2);
#endif
  S(vduse_dev_config); S(vduse_vq_config); S(vduse_vq_info); S(vduse_vq_eventfd);
  S(vduse_iotlb_entry); S(vduse_config_data); S(vduse_vq_state);
  S(vduse_dev_request); S(vduse_dev_response);
  O(vduse_dev_config, config_size); O(vduse_dev_config, features);
  O(vduse_vq_info, desc_addr); O(vduse_vq_info, split); O(vduse_vq_info, ready);
  O(vduse_iotlb_entry, perm); O(vduse_dev_request, vq_state);
  O(vduse_dev_response, vq_state);
  printf("\"VDUSE_NAME_MAX\": %d,\n", VDUSE_NAME_MAX);
  printf("\"VDUSE_API_VERSION\": %d\n}\n", VDUSE_API_VERSION);
  return 0;
}
