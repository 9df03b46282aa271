#!/bin/sh
# The seed's curl example, unchanged but for the host ($GLIMPSE_BASE), the key ($GLIMPSE_API_KEY)
# and the image path ($GLIMPSE_IMAGE).
curl -X POST "$GLIMPSE_BASE/api/image-classification/clip?labels=car,document,motorcycle,truck,person,other" \
-H "X-API-Key: $GLIMPSE_API_KEY" \
-F "image=@$GLIMPSE_IMAGE"
