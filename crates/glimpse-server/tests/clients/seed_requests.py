# The seed's Python `requests` example, unchanged but for the host (GLIMPSE_BASE), the key
# variable (GLIMPSE_API_KEY) and the image path (GLIMPSE_IMAGE). With CLIP_MODEL set,
# `clipModel` is added to the query after `labels`; unset, the request is the seed's.
import os
import requests
url = os.environ["GLIMPSE_BASE"] + "/api/image-classification/clip"
headers = {"X-API-Key": os.environ["GLIMPSE_API_KEY"]}
files = {"image": open(os.environ["GLIMPSE_IMAGE"], "rb")}
params = {"labels": "car,document,motorcycle,truck,person,other"}
if os.environ.get("CLIP_MODEL"):
    params["clipModel"] = os.environ["CLIP_MODEL"]
response = requests.post(url, headers=headers, files=files, params=params)
print(response.json())
