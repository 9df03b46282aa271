// The seed's Node 20 fetch + FormData example, unchanged but for the host (GLIMPSE_BASE), the
// key variable (GLIMPSE_API_KEY) and the image path (GLIMPSE_IMAGE). With CLIP_MODEL
// set, `clipModel` is added to the query after `labels`; unset, the request is the seed's.
import fs from 'node:fs';
const formData = new FormData();
const buf = fs.readFileSync(process.env.GLIMPSE_IMAGE);
formData.append('image', new Blob([buf], { type: 'image/jpeg' }), 'image.jpg');
const url = new URL(process.env.GLIMPSE_BASE + '/api/image-classification/clip');
url.searchParams.set('labels', 'car,document,motorcycle,truck,person,other');
if (process.env.CLIP_MODEL) url.searchParams.set('clipModel', process.env.CLIP_MODEL);
const response = await fetch(url, {
method: 'POST',
headers: { 'X-API-Key': process.env.GLIMPSE_API_KEY },
body: formData,
});
const data = await response.json();
