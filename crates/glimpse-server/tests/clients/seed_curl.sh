#!/bin/sh
# The seed's curl example, unchanged but for the host ($GLIMPSE_BASE), the key ($GLIMPSE_API_KEY)
# and the image path ($GLIMPSE_IMAGE). With $CLIP_MODEL set, `&clipModel=<it>` ends the
# query (the model picked, e.g. a SigLIP one); unset, the request is the seed's byte for byte.
curl -X POST "$GLIMPSE_BASE/api/image-classification/clip?labels=car,document,motorcycle,truck,person,other${CLIP_MODEL:+&clipModel=$CLIP_MODEL}" \
-H "X-API-Key: $GLIMPSE_API_KEY" \
-F "image=@$GLIMPSE_IMAGE"
