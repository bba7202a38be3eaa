import assert from "node:assert/strict";
import { test } from "node:test";
import { boxDisc, overlappingBoxes, pointInPolygon, polygonInside, polygonsIntersect } from "../geometry.mjs";

const square = (x, y, s) => [[x, y], [x + s, y], [x + s, y + s], [x, y + s]];

test("polygon checks of the scale test: crossing, containment, disjoint", () => {
  assert.equal(polygonsIntersect(square(0, 0, 10), square(5, 5, 10)), true, "crossing edges");
  assert.equal(polygonsIntersect(square(0, 0, 10), square(2, 2, 3)), true, "one inside the other");
  assert.equal(polygonsIntersect(square(0, 0, 10), square(11, 0, 10)), false, "apart");
  assert.equal(polygonsIntersect(square(0, 0, 10), square(10, 0, 10)), true, "touching edges count");
  assert.equal(polygonInside(square(2, 2, 3), square(0, 0, 10)), true);
  assert.equal(polygonInside(square(8, 8, 3), square(0, 0, 10)), false);
  assert.equal(pointInPolygon([5, 5], square(0, 0, 10)), true);
  assert.equal(pointInPolygon([15, 5], square(0, 0, 10)), false);
});

test("label checks of the scale test: overlapping boxes and box over disc", () => {
  const boxes = [{ x: 0, y: 0, w: 10, h: 10 }, { x: 10, y: 0, w: 5, h: 5 }, { x: 3, y: 3, w: 2, h: 2 }, { x: 40, y: 0, w: 1, h: 1 }];
  assert.deepEqual(overlappingBoxes(boxes), [[0, 2]]);
  assert.equal(boxDisc({ x: 0, y: 0, w: 10, h: 10 }, 12, 5, 3), true);
  assert.equal(boxDisc({ x: 0, y: 0, w: 10, h: 10 }, 14, 5, 3), false);
});
