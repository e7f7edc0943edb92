// Every figure opens at full size when clicked or tapped: a wide figure shrunk to a phone's
// width stays readable one tap away.
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("figure img, .cell_output img").forEach((img) => {
    if (img.closest("a")) return;
    const link = document.createElement("a");
    link.href = img.getAttribute("src");
    link.title = "Open the full-size figure";
    link.className = "enlarge-figure";
    img.parentNode.insertBefore(link, img);
    link.appendChild(img);
  });
});
